"""Pure ASGI middleware: request ids, access log, body size limit.

Written against the raw ASGI interface rather than ``BaseHTTPMiddleware`` so the gateway
path pays for a couple of function calls, not an extra task and stream per request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.core.errors import (
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPE_PREFIX,
    AppError,
    BadRequest,
    ErrorShapes,
    PayloadTooLarge,
    shaped_error,
)
from mainsail.core.logging import get_logger, level_check

REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")

access_log = get_logger("mainsail.access")
access_log_on = level_check("mainsail.access", logging.INFO)


def new_request_id() -> str:
    """32 random hex digits (the shape of a UUID's hex, without building one)."""
    return os.urandom(16).hex()


def accept_request_id(raw: str | None, *, max_length: int) -> str | None:
    """A caller-supplied id, if it is short and made of safe characters; otherwise None."""
    if raw and len(raw) <= max_length and _SAFE_REQUEST_ID.fullmatch(raw):
        return raw
    return None


class RequestContextMiddleware:
    """Gives every request an id, binds it to every log line, echoes it, logs the request."""

    def __init__(self, app: ASGIApp, *, max_length: int = 128) -> None:
        self.app = app
        self.max_length = max_length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        supplied = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        request_id = accept_request_id(supplied, max_length=self.max_length) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("ascii"))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # One X-Request-ID: a response that set its own (a /v1 error, shaped with the
                # id in its body too) keeps the middleware's.
                message["headers"] = _with_header(message.get("headers", ()), *header)
            await send(message)

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Checked first: below the level, the line would be built only to be dropped.
            if scope["type"] == "http" and access_log_on():
                access_log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()


class BodySizeLimitMiddleware:
    """Refuses bodies over the limit with 413, before they are read into memory.

    A declared ``Content-Length`` over the limit is refused at once, without reading a byte.
    A chunked body is counted as it streams and refused the moment it crosses the limit.
    Multipart uploads to ``upload_limits``' paths (streamed to disk, never held in memory)
    get those paths' own, larger limits.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        upload_limits: dict[str, int] | None = None,
        error_shapes: ErrorShapes = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_limits = upload_limits or {}
        self.error_shapes = error_shapes

    def _limit(self, scope: Scope) -> int:
        upload_limit = self.upload_limits.get(scope["path"])
        if upload_limit is not None:
            for name, value in scope["headers"]:
                if name == b"content-type" and value.lower().startswith(b"multipart/form-data"):
                    return upload_limit
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await self._refuse(
                        BadRequest("Content-Length is not a valid number"), scope, receive, send
                    )
                    return
                if declared > limit:
                    await self._refuse(PayloadTooLarge(_too_large(limit)), scope, receive, send)
                    return
                has_body = declared > 0
                break
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                has_body = True
        received = 0
        finished = not has_body

        async def counting_receive() -> Message:
            nonlocal received, finished
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
                finished = not message.get("more_body", False)
            else:
                finished = True  # the client left
            return message

        async def closing_send(message: Message) -> None:
            # A refusal before the whole body was read (at the size limit, or of the request
            # at all): the connection closes after it, or the server would go on reading and
            # discarding whatever the client still sends. A success keeps its connection.
            if (
                message["type"] == "http.response.start"
                and not finished
                and message["status"] >= 400
            ):
                headers = _with_header(message.get("headers", ()), b"connection", b"close")
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, counting_receive, closing_send if has_body else send)

    async def _refuse(self, exc: AppError, scope: Scope, receive: Receive, send: Send) -> None:
        """Answers before the body is read (so the connection closes after it): in the shape
        of the path's surface, else problem+json."""
        request_id = scope.get("state", {}).get("request_id")
        shaped = shaped_error(self.error_shapes, scope["path"], exc, request_id)
        if shaped is not None:
            shaped.headers["connection"] = "close"
            await shaped(scope, receive, send)
            return
        await _send_problem(send, scope, exc)


def _with_header(
    headers: Iterable[tuple[bytes, bytes]], name: bytes, value: bytes
) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``name`` (lower case) set to ``value`` alone."""
    return [*(header for header in headers if header[0] != name), (name, value)]


def _too_large(limit: int) -> str:
    return f"The request body exceeds the limit of {limit} bytes"


async def _send_problem(send: Send, scope: Scope, exc: AppError) -> None:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + exc.code,
        "title": exc.title,
        "status": exc.status,
        "code": exc.code,
        "detail": exc.detail,
        "instance": scope["path"],
    }
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
