"""``/v1/ws/chat``: the same answer events as the SSE stream, over a WebSocket.

Authenticate with ``Authorization``/``X-API-Key`` headers, or (browsers cannot set headers on a
WebSocket) with a first message ``{"type": "auth", "token": "..."}``; never in the URL, where
proxies log it. Then send ``{"type": "chat", "id": "any", "request": {...}}`` (a chat
completion body) as often as you like; each answer comes back as ``{"type": "chunk", "id",
"data": <chat.completion.chunk>}`` messages ending in ``{"type": "done", "id"}`` or
``{"type": "error", "id", "error": {...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from mainsail.core.errors import AppError
from mainsail.core.principal import Principal, Scope
from mainsail.identity.deps import authenticate, credential_kind, presented_credentials
from mainsail.identity.service import InsufficientScope
from mainsail.llm.gateway import CallContext, Gateway
from mainsail.openai_compat.router import openai_chunks, stream_error
from mainsail.openai_compat.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["openai-compatible"])

AUTH_TIMEOUT_S = 10
POLICY_VIOLATION = 1008


@router.websocket("/ws/chat")
async def chat_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    principal = await _authenticate(websocket)
    if principal is None:
        return
    gateway: Gateway = websocket.app.state.gateway
    request_id = getattr(websocket.state, "request_id", None) or "ws"
    presented = websocket.state.credentials
    try:
        while True:
            try:
                message = await websocket.receive_json()
            except ValueError:  # not JSON: say so, keep the socket
                error = {
                    "message": "Messages must be JSON.",
                    "type": "invalid_request_error",
                    "code": "invalid_request",
                }
                await websocket.send_json({"type": "error", "id": None, "error": error})
                continue
            # A socket can live for hours: the credential is checked again for every answer,
            # so a revoked key or an ended session stops working here too.
            try:
                principal = await authenticate(websocket, websocket.app.state.identity, presented)
                if not principal.has_scope(Scope.CHAT):  # the key's scopes narrowed since
                    raise InsufficientScope("This needs the chat scope.", scope=Scope.CHAT.value)
            except AppError as exc:
                error = {"message": exc.detail, "type": "authentication_error", "code": exc.code}
                await websocket.send_json({"type": "error", "id": None, "error": error})
                await websocket.close(code=POLICY_VIOLATION)
                return
            await _answer(websocket, gateway, principal, message, request_id=request_id)
    except WebSocketDisconnect:
        return


async def _authenticate(websocket: WebSocket) -> Principal | None:
    presented = presented_credentials(websocket)
    try:
        if presented is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(AUTH_TIMEOUT_S):
                    first = await websocket.receive_json()
                    if isinstance(first, dict) and first.get("type") == "auth":
                        presented = credential_kind(str(first.get("token", "")))
        if presented is None:
            raise AppError('Send credentials first: {"type": "auth", "token": "..."}.')
        principal = await authenticate(websocket, websocket.app.state.identity, presented)
        if not principal.has_scope(Scope.CHAT):
            raise AppError("This needs the chat scope.")
    except (AppError, WebSocketDisconnect, ValueError) as exc:
        detail = exc.detail if isinstance(exc, AppError) else "Authentication failed."
        with contextlib.suppress(Exception):
            await websocket.send_json(
                {
                    "type": "error",
                    "error": {
                        "message": detail,
                        "type": "authentication_error",
                        "code": "unauthorized",
                    },
                }
            )
            await websocket.close(code=POLICY_VIOLATION)
        return None
    websocket.state.credentials = presented
    await websocket.send_json({"type": "ready"})
    return principal


async def _answer(
    websocket: WebSocket,
    gateway: Gateway,
    principal: Principal,
    message: Any,
    *,
    request_id: str,
) -> None:
    ident = message.get("id") if isinstance(message, dict) else None
    try:
        if not isinstance(message, dict) or message.get("type") != "chat":
            raise ValueError('expected {"type": "chat", "id": ..., "request": {...}}')
        body = ChatCompletionRequest.model_validate(message.get("request"))
    except (ValueError, ValidationError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        error = {"message": reason, "type": "invalid_request_error", "code": "invalid_request"}
        await websocket.send_json({"type": "error", "id": ident, "error": error})
        return
    ctx = CallContext.of(
        principal,
        request_id=f"{request_id}:{ident}" if ident is not None else request_id,
        kind="v1.ws",
    )
    events = aiter(gateway.stream(body.to_request(), ctx))
    try:
        first = await anext(events)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        async for chunk in openai_chunks(
            first, events, created=int(time.time()), include_usage=include_usage
        ):
            await websocket.send_json({"type": "chunk", "id": ident, "data": chunk})
        await websocket.send_json({"type": "done", "id": ident})
    except AppError as exc:  # quota exhausted, for one
        await websocket.send_json(
            {
                "type": "error",
                "id": ident,
                "error": {
                    "message": exc.detail,
                    "type": "api_error",
                    "code": exc.code,
                    "status": exc.status,
                },
            }
        )
    except Exception as exc:  # LLM errors and anything unforeseen: an explicit error, always
        await websocket.send_json({"type": "error", "id": ident, "error": stream_error(exc)})
    finally:
        await events.aclose()  # type: ignore[attr-defined]
