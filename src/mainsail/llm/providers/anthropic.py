"""Anthropic Messages API: system prompt, tool_use / tool_result blocks, streaming events."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anthropic

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    LLMError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.providers.base import (
    STRUCTURED_TOOL,
    Timeouts,
    alternating_turns,
    answer_schema,
    new_response_id,
    no_embeddings,
    parse_arguments,
    status_error,
    tool_answer,
    transport_error,
    wants_structured,
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
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicAdapter:
    def __init__(
        self,
        *,
        name: str,
        api_key: str,
        base_url: str | None,
        timeouts: Timeouts,
        max_connections: int,
    ) -> None:
        import httpx2

        self.name = name
        self.timeouts = timeouts
        timeout = httpx2.Timeout(timeouts.read_s, connect=timeouts.connect_s)
        self.client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=anthropic.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                timeout=timeout,
            ),
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse:
        raise no_embeddings(self.name, entry)

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        structured = wants_structured(request)
        try:
            import httpx2

            message = await self.client.messages.create(
                **_arguments(request, entry),
                timeout=httpx2.Timeout(
                    self.timeouts.for_answer(entry), connect=self.timeouts.connect_s
                ),
            )
            blocks = list(message.content)
        except anthropic.AnthropicError as exc:
            raise map_anthropic_error(exc, provider=self.name, model=entry.name) from None
        except (AttributeError, TypeError):
            raise UpstreamBadResponse(
                f"{self.name} sent an answer we could not read.",
                provider=self.name,
                model=entry.name,
            ) from None
        except Exception as exc:
            raise transport_error(exc, provider=self.name, model=entry.name) from None
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in blocks:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                calls.append(
                    ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input))
                )
        finish = _FINISH.get(message.stop_reason or "end_turn", "stop")
        if structured:
            texts, calls, finish = tool_answer(texts, calls, finish)
        return ChatResponse(
            id=message.id or new_response_id("msg"),
            model=entry.name,
            provider=self.name,
            message=Message(
                role="assistant", content="".join(texts) or None, tool_calls=tuple(calls)
            ),
            finish_reason=finish,
            usage=_usage(message.usage),
        )

    async def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream:
        structured = wants_structured(request)
        input_usage: Any = None
        output_tokens = 0
        finish: FinishReason | None = None
        tool_index = -1
        block_is_tool: dict[int, bool] = {}
        answer_blocks: set[int] = set()  # blocks of the structured-answer tool: the text
        called = False  # a tool of the caller's was called
        # Tool blocks that have streamed no argument text yet: a tool without parameters gets
        # one empty ``partial_json``, which must still read as JSON ("{}", as unstreamed).
        no_arguments: dict[int, int] = {}
        events: Any = None
        try:
            events = await self.client.messages.create(**_arguments(request, entry), stream=True)
            async for event in events:
                kind = event.type
                if kind == "message_start":
                    input_usage = event.message.usage
                    output_tokens = getattr(input_usage, "output_tokens", 0) or 0
                    yield StreamStart(
                        id=event.message.id or new_response_id("msg"),
                        model=entry.name,
                        provider=self.name,
                    )
                elif kind == "content_block_start":
                    block = event.content_block
                    is_tool = block.type == "tool_use"
                    block_is_tool[event.index] = is_tool
                    if is_tool:
                        if structured and block.name == STRUCTURED_TOOL:
                            answer_blocks.add(event.index)
                        else:
                            called = True
                            tool_index += 1
                            yield ToolCallDelta(index=tool_index, id=block.id, name=block.name)
                        no_arguments[event.index] = tool_index
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta" and block_is_tool.get(event.index):
                        if not delta.partial_json:
                            continue
                        no_arguments.pop(event.index, None)
                        if event.index in answer_blocks:  # the answer tool's input: the text
                            yield TextDelta(delta.partial_json)
                        else:
                            yield ToolCallDelta(index=tool_index, arguments=delta.partial_json)
                elif kind == "content_block_stop" and event.index in no_arguments:
                    index = no_arguments.pop(event.index)
                    if event.index in answer_blocks:
                        yield TextDelta("{}")
                    else:
                        yield ToolCallDelta(index, arguments="{}")
                elif kind == "message_delta":
                    finish = _FINISH.get(event.delta.stop_reason or "end_turn", "stop")
                    output_tokens = event.usage.output_tokens or output_tokens
        except anthropic.AnthropicError as exc:
            raise map_anthropic_error(exc, provider=self.name, model=entry.name) from None
        except Exception as exc:
            raise transport_error(exc, provider=self.name, model=entry.name) from None
        finally:
            if events is not None:  # give the connection back, also when closed early
                with contextlib.suppress(Exception):
                    await events.close()
        if finish is None:
            raise UpstreamUnavailable(
                f"{self.name}'s stream ended before the answer was complete.",
                provider=self.name,
                model=entry.name,
            )
        if answer_blocks and not called and finish == "tool_calls":
            finish = "stop"
        usage = _usage(input_usage, output_tokens=output_tokens)
        yield StreamEnd(finish_reason=finish, usage=usage)


def _arguments(request: ChatRequest, entry: ModelEntry) -> dict[str, Any]:
    params = request.params
    system = "\n\n".join(m.content or "" for m in request.messages if m.role == "system")
    arguments: dict[str, Any] = {
        "model": entry.model,
        "messages": _messages(request.messages),
        "max_tokens": params.max_tokens or min(entry.max_output_tokens, 4096),
    }
    if system:
        arguments["system"] = system
    if params.stop:
        arguments["stop_sequences"] = list(params.stop)
    sampling = {"temperature": params.temperature, "top_p": params.top_p}
    extra = {k: v for k, v in sampling.items() if v is not None}
    if extra:
        arguments["extra_body"] = extra
    tools = [
        {
            "name": tool.name,
            "input_schema": tool.parameters,
            **({"description": tool.description} if tool.description else {}),
        }
        for tool in request.tools
    ]
    choice = request.tool_choice
    structured = wants_structured(request)
    if structured and tools and (choice is None or choice.mode == "auto"):
        # As OpenAI takes tools beside a JSON-schema answer: the model calls the caller's
        # tools, or gives its answer through the answer tool (one of them, always).
        tools = [*tools, _answer_tool(request)]
        arguments["tool_choice"] = {"type": "any"}
    elif structured:
        tools = [_answer_tool(request)]
        arguments["tool_choice"] = {"type": "tool", "name": STRUCTURED_TOOL}
    elif choice is not None:
        arguments["tool_choice"] = (
            {"type": "tool", "name": choice.name}
            if choice.mode == "tool"
            else {"type": {"required": "any"}.get(choice.mode, choice.mode)}
        )
    if tools:
        arguments["tools"] = tools
    forced_answer = arguments.get("tool_choice", {}).get("name") == STRUCTURED_TOOL
    if request.parallel_tool_calls is False and request.tools and not forced_answer:
        # Anthropic says it on tool_choice (the default choice is auto); "none" calls no tool.
        tool_choice = arguments.setdefault("tool_choice", {"type": "auto"})
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    return arguments


def _answer_tool(request: ChatRequest) -> dict[str, Any]:
    """The tool whose input is a JSON answer."""
    return {
        "name": STRUCTURED_TOOL,
        "description": "Give the answer as this tool's input.",
        "input_schema": answer_schema(request),
    }


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    return alternating_turns(messages, _blocks)


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content or "",
            }
        ]
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": message.content}] if message.content else []
    )
    return blocks + [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": parse_arguments(c.arguments)}
        for c in message.tool_calls
    ]


def _usage(usage: Any, *, output_tokens: int | None = None) -> Usage:
    if usage is None:
        return Usage(estimated=True)
    cached = getattr(usage, "cache_read_input_tokens", None) or 0
    written = getattr(usage, "cache_creation_input_tokens", None) or 0
    # Anthropic's input_tokens leaves out what was read from or written to the cache.
    return Usage(
        input_tokens=(usage.input_tokens or 0) + cached + written,
        output_tokens=output_tokens if output_tokens is not None else usage.output_tokens or 0,
        cached_input_tokens=cached,
        cache_write_tokens=written,
    )


def map_anthropic_error(exc: anthropic.AnthropicError, *, provider: str, model: str) -> LLMError:
    where = {"provider": provider, "model": model}
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code < 400:
        # An ``event: error`` inside a stream that began with 200: judge it by its type.
        kind = _error_type(exc.body)
        if kind == "rate_limit_error":
            return UpstreamRateLimited(
                f"{provider} is rate limiting us.", provider=provider, model=model
            )
        return UpstreamUnavailable(
            f"{provider} failed in the middle of its answer ({kind or 'error'}).", **where
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamTimeout(f"{provider} did not answer in time.", **where)
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamUnavailable(f"{provider} could not be reached.", **where)
    if isinstance(exc, anthropic.APIStatusError):
        return status_error(exc.status_code, provider=provider, model=model, response=exc.response)
    return UpstreamBadResponse(f"{provider} sent an answer we could not read.", **where)


def _error_type(body: object) -> str | None:
    """``overloaded_error`` from ``{"type": "error", "error": {"type": ...}}`` or its inner part."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            return str(inner["type"])
    return None
