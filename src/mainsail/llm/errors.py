"""What can go wrong in a model call, independent of the provider and of HTTP.

Adapters map their SDK's exceptions into these in one function each. ``retryable`` says whether
the same call may succeed if tried again; ``falls_back`` whether another model may serve it.
"""

from __future__ import annotations

from typing import ClassVar


class LLMError(Exception):
    code: ClassVar[str] = "upstream_error"
    retryable: ClassVar[bool] = False
    falls_back: ClassVar[bool] = False

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None):
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model


class UpstreamRateLimited(LLMError):
    code, retryable, falls_back = "upstream_rate_limited", True, True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: str | None):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UpstreamUnavailable(LLMError):
    """5xx, overloaded, connection refused or reset."""

    code, retryable, falls_back = "upstream_unavailable", True, True


class UpstreamTimeout(LLMError):
    code, retryable, falls_back = "upstream_timeout", True, True


class UpstreamBadResponse(LLMError):
    """The provider answered something we cannot parse."""

    code, retryable, falls_back = "upstream_bad_response", True, True


class UpstreamMisconfigured(LLMError):
    """Our credentials were refused, or the provider does not know the model id: another
    provider may still work, retrying this one will not."""

    code, retryable, falls_back = "upstream_misconfigured", False, True


class UpstreamRejected(LLMError):
    """The provider refused the request itself (4xx): no point retrying it anywhere."""

    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int | None = None, **kw: str | None):
        super().__init__(message, **kw)
        self.status = status


class CircuitOpen(LLMError):
    code, falls_back = "circuit_open", True


class StreamInterrupted(LLMError):
    """The stream broke after tokens were sent: too late to retry or fall back."""

    code = "stream_interrupted"


class InternalError(LLMError):
    """Something unforeseen broke a call; the class name goes to the logs, not the caller."""

    code = "internal_error"


class ModelNotFound(LLMError):
    code = "model_not_found"

    def __init__(self, model: str, available: list[str]):
        super().__init__(f"The model {model!r} does not exist.", model=model)
        self.available = available


class WrongModelKind(LLMError):
    """The model exists but does another job: a chat model named for embeddings, or back."""

    code = "wrong_model_kind"

    def __init__(self, model: str, kind: str, wanted: str, available: list[str]):
        names = ", ".join(available) or "none is configured"
        super().__init__(
            f"The model {model!r} is {_a(kind)} {kind} model; this call needs {_a(wanted)} "
            f"{wanted} model ({names}).",
            model=model,
        )
        self.available = available


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class EmbeddingsUnsupported(LLMError):
    """The provider has no embeddings API (Anthropic, the local providers), or not for this
    model (Bedrock models other than Amazon Titan text embeddings)."""

    code = "embeddings_unsupported"


class ProviderNotConfigured(LLMError):
    """The model exists in the catalogue but its provider has no credentials."""

    code = "provider_not_configured"

    def __init__(self, model: str, provider: str, settings: list[str]):
        super().__init__(
            f"The model {model!r} needs the {provider} provider; set {', '.join(settings)}.",
            provider=provider,
            model=model,
        )
        self.settings = settings


class InvalidChatRequest(LLMError):
    """Refused before any upstream call (bad tool schema, too long for the context window)."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.error_code = code or "invalid_request"


class GenerationUnavailable(LLMError):
    """Only the extractive model is configured and the caller needs a generative one."""

    code = "generation_unavailable"
