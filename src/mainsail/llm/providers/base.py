"""The one small interface every provider adapter implements."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import LLMError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EventStream,
    Message,
    StreamEnd,
    StreamStart,
    TextDelta,
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

    ``complete`` and ``stream`` raise only ``mainsail.llm.errors.LLMError`` subclasses.
    A stream yields ``StreamStart`` first and ends with ``StreamEnd``.
    """

    name: str

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse: ...

    def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream: ...

    async def aclose(self) -> None: ...


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
    """A JSON-schema answer, which Anthropic and Bedrock get through a forced tool call."""
    fmt = request.response_format
    return fmt is not None and fmt.type == "json_schema" and fmt.schema is not None
