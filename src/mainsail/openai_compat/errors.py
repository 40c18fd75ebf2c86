"""Errors on the /v1 surface take OpenAI's shape, so the official SDKs raise the right class:
``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request

from mainsail.core.errors import AppError, problem_response
from mainsail.llm.errors import (
    CircuitOpen,
    EmbeddingsUnsupported,
    GenerationUnavailable,
    InvalidChatRequest,
    LLMError,
    ModelNotFound,
    ProviderNotConfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    WrongModelKind,
)

# The most seconds of a provider's Retry-After passed on (a day): the header is a number a
# client may sleep for.
MAX_RETRY_AFTER_S = 86_400

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    error_type = _TYPES.get(status, "api_error")
    if code == "quota_exceeded":
        error_type = "insufficient_quota"
    body: dict[str, Any] = {
        "error": {"message": message, "type": error_type, "param": param, "code": code}
    }
    response = JSONResponse(body, status_code=status, headers=headers)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


def _llm_headers(exc: LLMError) -> dict[str, str]:
    """A provider's Retry-After, passed on to the caller whatever the error's shape."""
    if isinstance(exc, UpstreamRateLimited) and exc.retry_after is not None:
        return {"Retry-After": str(min(max(1, round(exc.retry_after)), MAX_RETRY_AFTER_S))}
    return {}


def llm_error_status(exc: LLMError) -> int:
    if isinstance(exc, ModelNotFound):
        return 404
    if isinstance(
        exc, InvalidChatRequest | UpstreamRejected | WrongModelKind | EmbeddingsUnsupported
    ):
        return 400
    if isinstance(exc, ProviderNotConfigured | GenerationUnavailable | CircuitOpen):
        return 503
    if isinstance(exc, UpstreamRateLimited):
        return 429
    if isinstance(exc, UpstreamTimeout):
        return 504
    return 502


def to_openai_error(exc: Exception, request_id: str | None) -> JSONResponse | None:
    """The OpenAI-shaped answer for ``exc``, or None if it is not ours to shape."""
    if isinstance(exc, LLMError):
        message = exc.message
        param = None
        headers = _llm_headers(exc)
        code = exc.code
        if isinstance(exc, ModelNotFound):
            message += f" Available models: {', '.join(exc.available) or 'none'}."
            param = "model"
        if isinstance(exc, WrongModelKind):
            param = "model"
        if isinstance(exc, InvalidChatRequest):
            param, code = exc.param, exc.error_code
        return openai_error(
            llm_error_status(exc),
            message,
            code=code,
            param=param,
            headers=headers,
            request_id=request_id,
        )
    if isinstance(exc, AppError):
        return openai_error(
            exc.status, exc.detail, code=exc.code, headers=dict(exc.headers), request_id=request_id
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = f"Invalid request: {'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}"
        return openai_error(
            400,
            message,
            code="invalid_request",
            param=".".join(loc) or None,
            request_id=request_id,
        )
    if isinstance(exc, HTTPException):
        return openai_error(
            exc.status_code,
            str(exc.detail),
            code=None,
            headers=dict(exc.headers or {}),
            request_id=request_id,
        )
    return None


async def llm_problem(request: Request, exc: Exception) -> JSONResponse:
    """A model failure outside /v1 (``/analyze``, later chat) as problem+json, with the same
    status the /v1 surface would give it."""
    if not isinstance(exc, LLMError):  # pragma: no cover - registered for LLMError only
        raise exc
    status = llm_error_status(exc)
    headers = _llm_headers(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, ModelNotFound | WrongModelKind):
        extra["available_models"] = exc.available
    if isinstance(exc, InvalidChatRequest) and exc.param:
        extra["param"] = exc.param
    return problem_response(
        status=status,
        code=exc.code,
        title=_TITLES.get(status, "Model call failed"),
        detail=exc.message,
        request=request,
        headers=headers,
        extra=extra,
    )


_TITLES = {
    400: "Invalid model request",
    404: "Unknown model",
    429: "Provider rate limit",
    503: "Model unavailable",
    504: "Model timed out",
}
