"""The one small interface every provider adapter implements."""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    EmbeddingsUnsupported,
    LLMError,
    UpstreamBadResponse,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    FinishReason,
    Message,
    StreamEnd,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    read_s: float = 60.0  # between bytes: also bounds the wait for each stream chunk
    total_s: float = 120.0  # a whole non-streaming answer (catalogue entries may override)

    def for_answer(self, entry: ModelEntry) -> float:
        """The read limit for a non-streaming call: no byte arrives until the answer is
        complete, so the per-byte limit must be at least the answer's whole time."""
        return max(self.read_s, entry.timeout_s or self.total_s)


class ProviderAdapter(Protocol):
    """Maps normalized requests to one provider's API and its answers and errors back.

    ``complete``, ``stream`` and ``embed`` raise only ``mainsail.llm.errors.LLMError``
    subclasses. A stream yields ``StreamStart`` first and ends with ``StreamEnd``. ``embed``
    returns one vector per input, in order; providers without embeddings raise
    ``EmbeddingsUnsupported`` (``no_embeddings``).
    """

    name: str

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse: ...

    def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream: ...

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse: ...

    async def aclose(self) -> None: ...


def no_embeddings(provider: str, entry: ModelEntry) -> EmbeddingsUnsupported:
    return EmbeddingsUnsupported(
        f"The {provider} provider has no embeddings; use an OpenAI, OpenAI-compatible or "
        "Bedrock Titan embedding model.",
        provider=provider,
        model=entry.name,
    )


def last_user_text(messages: tuple[Message, ...]) -> str:
    for message in reversed(messages):
        if message.role == "user" and message.content:
            return message.content
    return ""


def new_response_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def parse_arguments(arguments: str) -> Any:
    """Tool-call arguments as JSON; a model's malformed arguments become an empty object."""
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return {}


def transport_error(exc: Exception, *, provider: str, model: str) -> LLMError:
    """Exceptions the SDKs let through unwrapped: a body that is not JSON (``ValueError``), a
    connection cut mid-stream (``httpx2`` protocol errors), and anything unforeseen, which
    must still reach the caller as an error of ours (a stream may never end silently)."""
    import httpx2

    where = {"provider": provider, "model": model}
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout(f"{provider} did not answer in time.", **where)
    if isinstance(exc, httpx2.HTTPError):
        return UpstreamUnavailable(f"{provider} broke off the connection.", **where)
    if isinstance(exc, ValueError):
        return UpstreamBadResponse(f"{provider} sent an answer we could not read.", **where)
    return UpstreamBadResponse(f"{provider} failed unexpectedly ({type(exc).__name__}).", **where)


async def replay_as_stream(response: ChatResponse) -> EventStream:
    """A finished answer as a stream, word by word (local providers that answer at once)."""
    yield StreamStart(id=response.id, model=response.model, provider=response.provider)
    for piece in re.findall(r"\S+\s*", response.message.content or ""):
        yield TextDelta(piece)
    for index, call in enumerate(response.message.tool_calls):
        yield ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments)
    yield StreamEnd(finish_reason=response.finish_reason, usage=response.usage)


def wants_structured(request: ChatRequest) -> bool:
    """A JSON answer (to a schema, or any JSON object), which Anthropic and Bedrock get
    through a forced tool call: nothing else makes them keep to JSON."""
    fmt = request.response_format
    return fmt is not None and (
        (fmt.type == "json_schema" and fmt.schema is not None) or fmt.type == "json_object"
    )


# Anthropic and Bedrock are asked for a JSON answer as a call of this tool; its input is the
# answer.
STRUCTURED_TOOL = "structured_answer"


def tool_answer(
    texts: list[str], calls: list[ToolCall], finish: FinishReason
) -> tuple[list[str], list[ToolCall], FinishReason]:
    """A structured answer's parts as the caller sees them: the answer tool's input is the
    text when no tool of the caller's was called; the answer tool is never a tool call."""
    answers = [c for c in calls if c.name == STRUCTURED_TOOL]
    calls = [c for c in calls if c.name != STRUCTURED_TOOL]
    if answers and not calls:
        # Cut at the token limit, it says so.
        return [answers[0].arguments], calls, "stop" if finish == "tool_calls" else finish
    return texts, calls, finish


def answer_schema(request: ChatRequest) -> dict[str, Any]:
    """The JSON schema of a structured answer (any object for ``json_object``)."""
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
        return dict(fmt.schema)
    return {"type": "object"}


def retry_after(response: Any) -> float | None:
    """Seconds from ``Retry-After`` (or OpenAI's ``retry-after-ms``), if the response has one."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            pass
        else:  # "inf" and "nan" read as floats too, and say nothing usable
            if math.isfinite(seconds):
                return max(seconds, 0.0)
            continue
        with contextlib.suppress(TypeError, ValueError, IndexError):  # the HTTP-date form
            when = parsedate_to_datetime(value)
            return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def status_error(status: int, *, provider: str, model: str, response: Any = None) -> LLMError:
    """Our error for an HTTP status a provider answered with (the same for every SDK).
    Upstream messages are not passed on: they can quote our request or a masked key."""
    if status == 429:
        return UpstreamRateLimited(
            f"{provider} is rate limiting us.",
            retry_after=retry_after(response),
            provider=provider,
            model=model,
        )
    if status in (401, 403, 404):
        return UpstreamMisconfigured(
            f"{provider} refused our credentials or does not serve this model (HTTP {status}).",
            provider=provider,
            model=model,
        )
    if status in (408, 409, 425) or status >= 500:  # Anthropic's 529: overloaded
        return UpstreamUnavailable(
            f"{provider} failed (HTTP {status}).", provider=provider, model=model
        )
    return UpstreamRejected(
        f"{provider} rejected the request (HTTP {status}).",
        status=status,
        provider=provider,
        model=model,
    )


def alternating_turns(
    messages: tuple[Message, ...], blocks: Callable[[Message], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Turns for APIs without a system role in the message list (Anthropic, Bedrock): system
    messages are left out (they travel apart), a tool result rides in a user turn, and
    consecutive turns of one role are merged, as those APIs want roles to alternate.
    ``blocks`` builds a message's content blocks in the provider's own shape.

    Those APIs also refuse blank text blocks, turns with no content, and a first turn that is
    not the user's, all of which OpenAI takes: blank text is left out, then empty turns, then
    any answer before the first user turn (a greeting; nothing it could be an answer to)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "user" if message.role == "tool" else message.role
        content = [
            block
            for block in blocks(message)
            if not (isinstance(block.get("text"), str) and not block["text"].strip())
        ]
        if not content or (role == "assistant" and not out):
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(content)
        else:
            out.append({"role": role, "content": content})
    return out
