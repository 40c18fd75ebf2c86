"""One error hierarchy, rendered once as RFC 9457 problem+json.

Domain code raises ``AppError`` subclasses that carry their own status and stable ``code``.
Everything else (unknown routes, validation errors, unexpected exceptions) is mapped here too,
so a client sees one error format whatever went wrong. ``str(exc)`` of an unexpected error
never reaches a client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mainsail.core.logging import get_logger

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:mainsail:problem:"

# Renders an error for a family of paths in that surface's own shape (``/v1``: OpenAI's);
# None lets the default problem+json through.
ErrorShaper = Callable[[Exception, str | None], Response | None]
ErrorShapes = Sequence[tuple[str, ErrorShaper]]  # (path prefix, shaper), first match wins


def shaped_error(
    shapes: ErrorShapes, path: str, exc: Exception, request_id: str | None
) -> Response | None:
    """The answer to ``exc`` in the shape of the surface ``path`` belongs to, if it has one."""
    for prefix, shape in shapes:
        if path.startswith(prefix):
            return shape(exc, request_id)
    return None


log = get_logger(__name__)


class AppError(Exception):
    """Base of every error the service reports on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"
    # True when the writes made before the error are part of the answer and must be kept
    # (revoking a refresh-token family on reuse); the unit of work commits instead of rolling back.
    commit: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(AppError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Request body too large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnprocessableContent(AppError):
    status, code, title = 422, "validation_error", "Request validation failed"


class TooManyRequests(AppError):
    status, code, title = 429, "too_many_requests", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code, title = "database_unavailable", "Database unavailable"


class DatabaseBusy(ServiceUnavailable):
    code, title = "database_busy", "Database busy"


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    request: Request | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            body["request_id"] = request_id
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_CONTENT_TYPE
    )


def describe_validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may be a password)."""
    described = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        described.append(
            {
                "field": ".".join(loc),
                "loc": loc,
                "message": str(error.get("msg", "invalid value")),
                "type": str(error.get("type", "value_error")),
            }
        )
    return described


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(AppError, exc)
    return problem_response(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        request=request,
        headers=exc.headers,
        extra=exc.extra,
    )


# Framework-raised HTTP errors get the same code as ours for the same status.
_BY_STATUS: dict[int, type[AppError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        UnprocessableContent,
        TooManyRequests,
        ServiceUnavailable,
    )
}


def _phrase(status: int) -> str:
    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"


def _http_detail(request: Request, exc: StarletteHTTPException) -> str | None:
    """The exception's own detail, or for an unknown route or method, which one it was."""
    status = exc.status_code
    if isinstance(exc.detail, str) and exc.detail != _phrase(status):
        return exc.detail
    if status == 404:
        return f"No route matches {request.method} {request.url.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    status = exc.status_code
    phrase = _phrase(status)
    known = _BY_STATUS.get(status)
    code = known.code if known else phrase.lower().replace(" ", "_").replace("-", "_")
    detail = _http_detail(request, exc)
    phrase = known.title if known else phrase
    return problem_response(
        status=status,
        code=code,
        title=phrase,
        detail=detail,
        request=request,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    errors = describe_validation_errors(exc.errors())
    fields = ", ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem_response(
        status=422,
        code=UnprocessableContent.code,
        title=UnprocessableContent.title,
        detail=f"Invalid request: {fields}" if fields else None,
        request=request,
        extra={"errors": errors},
    )


def _is_connection_problem(exc: DBAPIError) -> bool:
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


# What PostgreSQL cannot hold, from the caller's input: a NUL (U+0000) in text (22021) or in
# JSON (22P05). Such a request is refused as it is; nothing else is wrong with the service.
_UNSTORABLE = frozenset({"22021", "22P05"})
# What waiting on other work ends in: a statement or lock timeout (57014, 55P03), a deadlock
# (40P01), a serialization failure (40001). The statement's transaction is rolled back and the
# same request can succeed a moment later, so the caller is told to retry, not shown a 500.
_CONTENDED = frozenset({"57014", "55P03", "40P01", "40001"})


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    cause = orig.__cause__ if orig is not None else None
    state = getattr(orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
    return state if isinstance(state, str) else None


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(DBAPIError, exc)
    state = _sqlstate(exc)
    if state in _CONTENDED:
        log.warning("database_busy", sqlstate=state, path=request.url.path)
        return await _app_error(
            request,
            DatabaseBusy(
                "The request waited too long on the database (a timeout, a lock or a "
                "conflicting write); try again shortly.",
                headers={"Retry-After": "1"},
            ),
        )
    if state in _UNSTORABLE:
        return await _app_error(
            request,
            UnprocessableContent(
                "The request holds a character that cannot be stored or searched (NUL, "
                "U+0000); remove it and send the request again."
            ),
        )
    if _is_connection_problem(exc):
        log.warning("database_unavailable", error=type(exc.orig).__name__)
        return await _app_error(
            request, DatabaseUnavailable("The database is unreachable; try again shortly.")
        )
    return await _unexpected_error(request, exc)


async def _connection_refused(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database_unavailable", error=type(exc).__name__)
    return await _app_error(
        request, DatabaseUnavailable("The database is unreachable; try again shortly.")
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Runs in Starlette's outermost middleware, after the request context was unbound.
    request_id = getattr(request.state, "request_id", None)
    log.error("unhandled_exception", exc_info=exc, path=request.url.path, request_id=request_id)
    response = problem_response(
        status=500,
        code=AppError.code,
        title=AppError.title,
        detail="An unexpected error occurred; the request id identifies it in the logs.",
        request=request,
    )
    if request_id:  # this response bypasses the request-id middleware's send hook
        response.headers["X-Request-ID"] = request_id
    return response


Handler = Callable[[Request, Exception], Awaitable[Response]]


def install_error_handlers(app: FastAPI, *, shapes: ErrorShapes = ()) -> None:
    """problem+json for every error, except on paths ``shapes`` answer in their own shape (an
    unknown route or method under ``/v1``, or an error raised before the route runs)."""

    def shaped(handler: Handler) -> Handler:
        if not shapes:
            return handler

        async def handle(request: Request, exc: Exception) -> Response:
            path = request.url.path
            if not any(path.startswith(prefix) for prefix, _ in shapes):
                return await handler(request, exc)
            shown = exc
            if isinstance(exc, StarletteHTTPException):  # say which route or method
                shown = StarletteHTTPException(
                    exc.status_code, _http_detail(request, exc), headers=exc.headers
                )
            request_id = getattr(request.state, "request_id", None)
            response = shaped_error(shapes, path, shown, request_id)
            return response if response is not None else await handler(request, exc)

        return handle

    app.add_exception_handler(AppError, shaped(_app_error))
    app.add_exception_handler(StarletteHTTPException, shaped(_http_error))
    app.add_exception_handler(RequestValidationError, shaped(_validation_error))
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(ConnectionRefusedError, _connection_refused)
    app.add_exception_handler(Exception, _unexpected_error)
