"""The OpenAI Chat Completions and Embeddings wire formats, and their mapping to the gateway's
types.

Unknown request fields are ignored, as OpenAI-compatible servers do: clients send fields
(``logprobs``, ``store``, ``metadata``...) that change nothing here.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    Usage,
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCallIn(_Lenient):
    name: str
    arguments: str = ""


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(
        cls, value: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
        return value

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content)
        return self.content


class FunctionDefinitionIn(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    # What ``openai.pydantic_function_tool`` sends: the provider must hold the arguments to
    # the schema, or the SDK's client-side parse of them can fail.
    strict: bool | None = None


class ToolIn(_Lenient):
    type: Literal["function"]
    function: FunctionDefinitionIn


class ToolChoiceFunctionName(_Lenient):
    name: str


class ToolChoiceFunction(_Lenient):
    type: Literal["function"]
    function: ToolChoiceFunctionName


class JsonSchemaIn(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None


# Stop sequences per request, as OpenAI allows.
MAX_STOP_SEQUENCES = 4


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=4096)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    stream: bool | None = False  # null: the default, as OpenAI's schema allows
    stream_options: StreamOptions | None = None
    tools: Annotated[list[ToolIn], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceFunction | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        # Checked before the union is tried: its branches' errors would name ``stop.str``
        # and say "a valid string" for a list that is only too long.
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    def to_request(self) -> ChatRequest:
        messages = tuple(
            Message(
                role="system" if m.role == "developer" else m.role,
                content=m.text(),
                name=m.name,
                tool_call_id=m.tool_call_id,
                tool_calls=tuple(
                    ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                    for c in m.tool_calls or ()
                ),
            )
            for m in self.messages
        )
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        choice: ToolChoice | None = None
        if isinstance(self.tool_choice, ToolChoiceFunction):
            choice = ToolChoice(mode="tool", name=self.tool_choice.function.name)
        elif self.tool_choice is not None:
            choice = ToolChoice(mode=self.tool_choice)
        fmt: ResponseFormat | None = None
        if self.response_format is not None:
            schema = self.response_format.json_schema
            fmt = ResponseFormat(
                type=self.response_format.type,
                name=schema.name if schema else None,
                schema=schema.schema_ if schema else None,
                strict=bool(schema.strict) if schema else False,
            )
        return ChatRequest(
            model=self.model,
            messages=messages,
            params=SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_completion_tokens or self.max_tokens,
                max_tokens_name=(
                    "max_completion_tokens"
                    if self.max_completion_tokens is not None
                    else "max_tokens"
                ),
                stop=stop,
                seed=self.seed,
                presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty,
            ),
            tools=tuple(
                ToolDefinition(
                    name=t.function.name,
                    description=t.function.description,
                    parameters=t.function.parameters,
                    strict=t.function.strict,
                )
                for t in self.tools or ()
            ),
            tool_choice=choice,
            response_format=fmt,
            parallel_tool_calls=self.parallel_tool_calls,
        )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def completion_json(response: ChatResponse, *, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.message.content,
        "refusal": response.refusal,
    }
    if response.message.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in response.message.tool_calls
        ]
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": response.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_json(response.usage),
        "system_fingerprint": None,
    }


def chunk_json(
    chunk_id: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage_json(usage)
    return body


# --- embeddings -----------------------------------------------------------------------------

# Texts per request, as OpenAI allows (the gateway splits them further where a provider
# takes fewer at once).
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingsRequest(_Lenient):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    # One text or a list of texts (token-id arrays are not supported: send the text). Empty
    # ones are refused by the gateway, as for every caller.
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: object) -> object:
        if isinstance(value, list):
            if len(value) > MAX_EMBEDDING_INPUTS:
                raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} texts per request")
            if not all(isinstance(item, str) for item in value):
                raise ValueError("texts only: token arrays are not supported")
        elif not isinstance(value, str):
            raise ValueError("a text or a list of texts")
        return value

    def to_request(self) -> EmbeddingRequest:
        inputs = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        return EmbeddingRequest(model=self.model, inputs=inputs, dimensions=self.dimensions)


def embeddings_json(
    response: EmbeddingResponse, *, encoding_format: Literal["float", "base64"]
) -> dict[str, Any]:
    """OpenAI's embedding list: base64 is the float32 little-endian bytes of each vector."""
    vectors = np.ascontiguousarray(response.vectors, dtype="<f4")
    data: list[Any]
    if encoding_format == "base64":
        data = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        data = vectors.tolist()
    tokens = response.usage.input_tokens
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": embedding}
            for index, embedding in enumerate(data)
        ],
        "model": response.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
