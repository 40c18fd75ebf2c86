"""``Idempotency-Key`` as pure ASGI middleware, for the paths listed in settings.

A request to a listed path (POST or PATCH) with the header, from an authenticated caller:

- is fingerprinted (method, path, query, canonical JSON body) and claims the key for the
  caller (keys are per user);
- runs once; its answer is stored when it is definitive (2xx, and 4xx that say something
  about the request itself) and the key is released otherwise (5xx, 429, 401/403, 408, 409, 415,
  a crash), so a retry runs afresh;
- a repeat with the same fingerprint gets the stored status, content type and body with
  ``Idempotent-Replayed: true``; with another fingerprint, 422; while the first still runs,
  it waits up to ``wait_s`` and then gets the answer, or 409 ``request_in_progress``.

Everything else passes straight through: other paths and methods, requests without the header
(unless ``required``), callers without valid credentials (the app answers 401), and streams
(``"stream": true`` in the body, or a ``text/event-stream`` answer), which are never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.core.errors import (
    AppError,
    BadRequest,
    Conflict,
    ErrorShapes,
    Forbidden,
    ServiceUnavailable,
    UnprocessableContent,
    problem_response,
    shaped_error,
)
from mainsail.core.logging import get_logger
from mainsail.core.principal import Principal
from mainsail.idempotency.models import MAX_KEY_LENGTH
from mainsail.idempotency.service import Claim, IdempotencyStore, InProgress, Mismatch, Stored
from mainsail.identity.deps import authenticate, presented_credentials
from mainsail.settings import IdempotencySettings

log = get_logger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
_HEADER = HEADER.lower().encode()
_METHODS = frozenset({"POST", "PATCH"})
# Response headers that are part of the answer (the rest, such as X-Request-ID, belong to
# the delivery and are set afresh on a replay).
_KEPT_HEADERS = frozenset({"content-type", "content-language", "location"})
# 4xx answers that depend on something other than the request's fingerprint and may change
# on a retry: credentials, timing, locks, limits, and the Content-Type header (415; the
# fingerprint holds the body, not the header that says how to read it).
_TRANSIENT_4XX = frozenset({401, 403, 408, 409, 415, 423, 425, 429})


class InvalidIdempotencyKey(BadRequest):
    code = "invalid_idempotency_key"


class IdempotencyKeyRequired(BadRequest):
    code = "idempotency_key_required"


class IdempotencyKeyReused(UnprocessableContent):
    code, title = "idempotency_key_reused", "Idempotency key reused"


class NarrowerCredential(Forbidden):
    code = "insufficient_scope"


class RequestInProgress(Conflict):
    code, title = "request_in_progress", "Request in progress"


class IdempotencyUnavailable(ServiceUnavailable):
    code = "idempotency_unavailable"


_UNPARSED = object()


def storable(status: int) -> bool:
    """Answers a retry would get again: success, and client errors about the request."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in _TRANSIENT_4XX)


def fingerprint(method: str, path: str, query: bytes, body: bytes, parsed: Any) -> str:
    """SHA-256 of the request; a JSON body counts by content, not by spacing or key order."""
    if parsed is not _UNPARSED:
        with contextlib.suppress(ValueError, RecursionError):  # else the raw bytes
            body = json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, hashlib.sha256(body).digest()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _UNPARSED


def parse_key(values: list[bytes]) -> str:
    """The key from the header's values, or ``InvalidIdempotencyKey``. Accepts the draft's
    structured-field string (``"abc"``) and a bare token."""
    if len(values) != 1:
        raise InvalidIdempotencyKey(f"Send exactly one {HEADER} header.")
    key = values[0].decode("latin-1").strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        raise InvalidIdempotencyKey(f"The {HEADER} header is empty.")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"The {HEADER} header is longer than {MAX_KEY_LENGTH} characters."
        )
    if not key.isprintable() or not key.isascii():
        raise InvalidIdempotencyKey(f"The {HEADER} header must be printable ASCII.")
    return key


class IdempotencyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: IdempotencySettings,
        error_shapes: ErrorShapes = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.exact = frozenset(p for p in settings.paths if not p.endswith("/*"))
        self.prefixes = tuple(p[:-1] for p in settings.paths if p.endswith("/*"))
        self.error_shapes = error_shapes

    def applies(self, path: str) -> bool:
        return path in self.exact or (bool(self.prefixes) and path.startswith(self.prefixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _METHODS
            or not self.applies(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == _HEADER]
        if not values and not self.settings.required:
            await self.app(scope, receive, send)
            return
        principal = await _principal(scope)
        if principal is None:  # no or bad credentials: the app says 401
            await self.app(scope, receive, send)
            return
        try:
            if not values:
                raise IdempotencyKeyRequired(f"This endpoint needs an {HEADER} header.")
            key = parse_key(values)
        except AppError as exc:
            await self._refuse(exc, scope, receive, send)
            return
        messages, complete, error = await _read_body(receive)
        replay_receive = _replaying(messages, error, receive)
        if not complete:  # too large, or the client left: the app deals with it
            await self.app(scope, replay_receive, send)
            return
        body = b"".join(m.get("body", b"") for m in messages)
        parsed = _parse_json(body)
        if isinstance(parsed, dict) and parsed.get("stream") is True:
            await self.app(scope, replay_receive, send)  # streams are never stored
            return
        try:
            store: IdempotencyStore = scope["app"].state.idempotency
            outcome = await store.begin(
                user_id=principal.user_id,
                key=key,
                fingerprint=fingerprint(
                    scope["method"], scope["path"], scope.get("query_string", b""), body, parsed
                ),
                method=scope["method"],
                path=scope["path"],
                scopes=[str(s) for s in principal.scopes],
            )
        except Exception as exc:
            log.warning("idempotency_unavailable", error=type(exc).__name__)
            await self._refuse(
                IdempotencyUnavailable(
                    "Idempotency keys cannot be checked right now; retry shortly.",
                    headers={"Retry-After": "1"},
                ),
                scope,
                receive,
                send,
            )
            return
        if isinstance(outcome, Stored) and not outcome.scopes <= set(principal.scopes):
            await self._refuse(
                NarrowerCredential(
                    f"The answer stored for this {HEADER} was made with a credential whose "
                    "scopes this one lacks."
                ),
                scope,
                receive,
                send,
            )
        elif isinstance(outcome, Stored):
            log.info("idempotent_replay", status=outcome.status)
            await _replay(outcome, send)
        elif isinstance(outcome, Mismatch):
            await self._refuse(
                IdempotencyKeyReused(
                    f"This {HEADER} was already used for a different request; "
                    "use a new key for a new request."
                ),
                scope,
                receive,
                send,
            )
        elif isinstance(outcome, InProgress):
            await self._refuse(
                RequestInProgress(
                    f"A request with this {HEADER} is still being processed; retry later.",
                    headers={"Retry-After": str(outcome.retry_after_s)},
                ),
                scope,
                receive,
                send,
            )
        else:
            await self._run(outcome, store, scope, replay_receive, send)

    async def _run(
        self, claim: Claim, store: IdempotencyStore, scope: Scope, receive: Receive, send: Send
    ) -> None:
        status: int | None = None
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        size = 0
        complete = oversized = False
        limit = self.settings.max_response_bytes

        async def capture(message: Message) -> None:
            nonlocal status, headers, size, complete, oversized
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in message.get("headers", ())
                ]
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    oversized = True
                    chunks.clear()
                elif not oversized:
                    chunks.append(chunk)
                complete = not message.get("more_body", False)
            await send(message)

        keep = False
        try:
            await self.app(scope, receive, capture)
            keep = (
                complete
                and not oversized
                and status is not None
                and storable(status)
                and not any(
                    name == "content-type" and value.startswith("text/event-stream")
                    for name, value in headers
                )
            )
        finally:
            if keep and status is not None:
                await store.finish(
                    claim,
                    status=status,
                    headers=[(n, v) for n, v in headers if n in _KEPT_HEADERS],
                    body=b"".join(chunks),
                )
            else:
                await store.finish(claim)

    async def _refuse(self, exc: AppError, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id")
        shaped = shaped_error(self.error_shapes, scope["path"], exc, request_id)
        if shaped is not None:
            await shaped(scope, receive, send)
            return
        response = problem_response(
            status=exc.status,
            code=exc.code,
            title=exc.title,
            detail=exc.detail,
            request=Request(scope),
            headers=exc.headers,
            extra={"header": HEADER},
        )
        await response(scope, receive, send)


async def _principal(scope: Scope) -> Principal | None:
    connection = HTTPConnection(scope)
    try:
        presented = presented_credentials(connection)
        if presented is None:
            return None
        return await authenticate(connection, connection.app.state.identity, presented)
    except Exception:  # refused or unresolvable: the app gives the real answer
        return None


async def _read_body(receive: Receive) -> tuple[list[Message], bool, Exception | None]:
    """The request's messages, whether the body is whole, and what stopped reading it."""
    messages: list[Message] = []
    try:
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, False, None
            if not message.get("more_body", False):
                break
    except Exception as exc:  # e.g. the body-size limit: the app renders it in its shape
        return messages, False, exc
    if len(messages) > 1:
        whole = b"".join(m.get("body", b"") for m in messages)
        messages = [{"type": "http.request", "body": whole, "more_body": False}]
    return messages, True, None


def _replaying(messages: list[Message], error: Exception | None, receive: Receive) -> Receive:
    """A ``receive`` that hands the app what was read, then the failure or the live channel."""
    pending = list(reversed(messages))

    async def replay() -> Message:
        if pending:
            return pending.pop()
        if error is not None:
            raise error
        return await receive()

    return replay


async def _replay(stored: Stored, send: Send) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers]
    headers.append((b"content-length", str(len(stored.body)).encode()))
    headers.append(REPLAYED_HEADER)
    await send({"type": "http.response.start", "status": stored.status, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body})
