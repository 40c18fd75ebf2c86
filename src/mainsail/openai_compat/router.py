"""OpenAI-compatible API: point an OpenAI SDK (or LangChain, or a browser app) at
``http://host:8000/v1`` and keep working, with the provider keys kept on the server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from mainsail.core.deps import JsonBody
from mainsail.core.logging import get_logger
from mainsail.core.principal import Scope
from mainsail.identity.deps import CurrentPrincipal, require_scope
from mainsail.llm.errors import InternalError, LLMError, StreamInterrupted
from mainsail.llm.types import StreamEnd, StreamEvent, StreamStart, TextDelta, ToolCallDelta
from mainsail.openai_compat.deps import GatewayDep, call_context
from mainsail.openai_compat.errors import llm_error_status, to_openai_error
from mainsail.openai_compat.schemas import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    chunk_json,
    completion_json,
    embeddings_json,
)

log = get_logger(__name__)
# Marks an answer replayed from the response cache (no upstream call, no cost).
CACHE_HIT = {"Mainsail-Cache": "hit"}


class OpenAIRoute(APIRoute):
    """Every failure on this surface, authentication included, in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                shaped = to_openai_error(exc, getattr(request.state, "request_id", None))
                if shaped is None:
                    raise
                return shaped

        return handle


router = APIRouter(
    prefix="/v1",
    tags=["openai-compatible"],
    route_class=OpenAIRoute,
    dependencies=[JsonBody, require_scope(Scope.CHAT)],
)


@router.get("/models", summary="Models this server can answer with (chat and embeddings)")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": entry.name, "object": "model", "created": 0, "owned_by": entry.provider}
            for entry in [*gateway.available_models(), *gateway.available_models("embedding")]
        ],
    }


@router.post("/embeddings", summary="Embeddings of one text or a list of texts")
async def embeddings(
    body: EmbeddingsRequest, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> JSONResponse:
    ctx = call_context(request, principal, kind="v1.embeddings")
    response = await gateway.embed(body.to_request(), ctx)
    return JSONResponse(embeddings_json(response, encoding_format=body.encoding_format))


@router.post("/chat/completions", summary="Chat completion (JSON, or SSE with stream: true)")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    chat = body.to_request()
    ctx = call_context(request, principal, kind="v1.chat")
    created = int(time.time())
    if not body.stream:
        response = await gateway.complete(chat, ctx)
        return JSONResponse(
            completion_json(response, created=created),
            headers=CACHE_HIT if response.cache_hit else None,
        )
    events = aiter(gateway.stream(chat, ctx))
    # Wait for the answer to start before sending a status: a failure before the first token
    # (after every retry and fallback) is an ordinary HTTP error, not a stream.
    try:
        first = await anext(events)
    except StopAsyncIteration:  # pragma: no cover - a stream always starts
        raise LLMError("The model produced no answer.") from None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if isinstance(first, StreamStart) and first.cache_hit:
        headers.update(CACHE_HIT)
    return StreamingResponse(
        _sse(first, events, created=created, include_usage=include_usage),
        media_type="text/event-stream",
        headers=headers,
    )


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def openai_chunks(
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    *,
    created: int,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    """The answer as OpenAI chunk objects: a role chunk, deltas, a finish chunk, and a usage
    chunk if asked for. Raises ``LLMError`` if the answer breaks off."""
    start = first if isinstance(first, StreamStart) else StreamStart("chatcmpl", "unknown", "")
    chunk_id, model = start.id, start.model
    yield chunk_json(chunk_id, model, created, delta={"role": "assistant", "content": ""})
    pending: list[StreamEvent] = [] if isinstance(first, StreamStart) else [first]
    ended = False
    async for event in _chain(pending, events):
        if isinstance(event, TextDelta):
            yield chunk_json(chunk_id, model, created, delta={"content": event.text})
        elif isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {
                "index": event.index,
                "function": {"arguments": event.arguments},
            }
            if event.id is not None:
                call["id"], call["type"] = event.id, "function"
            if event.name is not None:
                call["function"]["name"] = event.name
            yield chunk_json(chunk_id, model, created, delta={"tool_calls": [call]})
        elif isinstance(event, StreamEnd):
            ended = True
            yield chunk_json(chunk_id, model, created, delta={}, finish_reason=event.finish_reason)
            if include_usage:
                yield chunk_json(chunk_id, model, created, usage=event.usage)
    if not ended:  # a stream without its end is not an answer, whatever the reason
        raise StreamInterrupted("The answer ended without finishing.")


def stream_error(exc: Exception) -> dict[str, Any]:
    """The error event that ends a broken stream; never the text of an unexpected error."""
    if not isinstance(exc, LLMError):
        log.error("stream_crashed", exc_info=exc)
        exc = InternalError("The answer failed unexpectedly; the request id identifies it.")
    return {
        "message": exc.message,
        "type": "api_error",
        "param": None,
        "code": exc.code,
        "status": llm_error_status(exc),
    }


async def _sse(
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    *,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Every stream ends with a finish chunk (+ usage) and ``[DONE]``, or with an explicit
    error event: never a silent cut."""
    try:
        async for chunk in openai_chunks(
            first, events, created=created, include_usage=include_usage
        ):
            yield _data(chunk)
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        log.warning("stream_failed", code=getattr(exc, "code", type(exc).__name__))
        yield _data({"error": stream_error(exc)})
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # runs the gateway's metering


async def _chain(
    first: list[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event
