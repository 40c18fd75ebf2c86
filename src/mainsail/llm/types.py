"""Normalized chat and embedding types. Providers map to and from these; nothing above ``llm``
sees an SDK type.

Plain dataclasses (slots): they are built on every request on the gateway's hot path.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``content`` is the text; several text parts are joined with newlines."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # on role "tool": the call this answers
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    parameters: dict[str, Any]  # JSON Schema of the arguments
    description: str | None = None
    # Hold the model to the schema exactly (OpenAI's structured outputs); None: not asked.
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``, ``none``, ``required``, or one named tool (mode ``tool``)."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # The parameter the caller set max_tokens with (/v1 also takes max_completion_tokens):
    # an error about the output limit names the one the caller sent.
    max_tokens_name: str = field(default="max_tokens", compare=False)


@dataclass(frozen=True, slots=True)
class Passage:
    """A piece of supplied context (retrieval results), for models that answer from sources."""

    id: str
    text: str
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    context: tuple[Passage, ...] = ()
    # False: at most one tool call per answer; None: the provider's default (parallel allowed).
    parallel_tool_calls: bool | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # part of input_tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # part of input_tokens written to the provider's prompt cache
    estimated: bool = False  # counted by us because the provider reported nothing

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ChatResponse:
    id: str
    model: str  # the public name of the model that answered (after any fallback)
    provider: str
    message: Message
    finish_reason: FinishReason
    usage: Usage
    cache_hit: bool = False  # served from Mainsail's response cache, no upstream call
    refusal: str | None = None  # the model declined, saying why (OpenAI's ``message.refusal``)


# --- streaming ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """A piece of the model's refusal, in place of an answer (OpenAI's ``delta.refusal``)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """First event of every stream: which model is answering (after any fallback)."""

    id: str
    model: str
    provider: str
    cache_hit: bool = False


@dataclass(frozen=True, slots=True)
class StreamEnd:
    finish_reason: FinishReason
    usage: Usage


StreamEvent = StreamStart | TextDelta | RefusalDelta | ToolCallDelta | StreamEnd
# What every stream method returns: an async generator, so callers can close it early.
EventStream = AsyncGenerator[StreamEvent, None]


# --- embeddings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]  # texts, embedded in this order
    dimensions: int | None = None  # shorter vectors, where the model supports it


@dataclass(frozen=True, slots=True, eq=False)
class EmbeddingResponse:
    model: str  # the public name of the model
    provider: str
    vectors: np.ndarray  # float32 (len(inputs), dimension), as the provider gave them
    usage: Usage  # input_tokens only
