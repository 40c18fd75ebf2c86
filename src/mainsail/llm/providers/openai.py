"""OpenAI and every OpenAI-compatible server (Ollama, vLLM, LM Studio, Azure OpenAI)."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import openai

from mainsail.core.logging import get_logger
from mainsail.llm.catalogue import ModelEntry, OpenAITransport
from mainsail.llm.errors import (
    LLMError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.providers.base import Timeouts, new_response_id, status_error, transport_error
from mainsail.llm.providers.h1 import UnsupportedProxy
from mainsail.llm.providers.openai_http import ChatWire
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    FinishReason,
    Message,
    RefusalDelta,
    StreamEnd,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

log = get_logger("mainsail.llm")
# OpenAI's own API, also when named by its URL instead of left as the SDK's default.
OFFICIAL_HOST = "api.openai.com"
# How chat requests travel: straight over HTTP (see ``openai_http``) or through the SDK.
Transport = OpenAITransport
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _call_index(call: dict[str, Any], unindexed: dict[str, int]) -> int:
    """A streamed tool call piece's index. Some compatible servers send none: then a piece
    with a new id starts the next call, and one without an id continues the last."""
    index = call.get("index")
    if index is not None:
        return int(index)
    call_id = call.get("id")
    if call_id is None:
        return max(len(unindexed) - 1, 0)
    return unindexed.setdefault(call_id, len(unindexed))


class OpenAIAdapter:
    """Chat goes through ``ChatWire`` (``transport="direct"``, the default) or through the
    SDK's client (``"sdk"``); embeddings always through the SDK's client. Both chat paths send
    the same body with the same headers and map answers and errors the same way."""

    def __init__(
        self,
        *,
        name: str,
        api_key: str,
        base_url: str | None,
        timeouts: Timeouts,
        max_connections: int,
        transport: Transport = "direct",
    ) -> None:
        self.name = name
        self.timeouts = timeouts
        # The official API wants max_completion_tokens (its reasoning models refuse
        # max_tokens); compatible servers know max_tokens.
        self._official = base_url is None or urlsplit(base_url).hostname == OFFICIAL_HOST
        # aiohttp under the SDK: about half the client CPU of the default transport per call,
        # and its pool does not slow down as connections grow (measured in bench/).
        http_client = openai.DefaultAioHttpClient(
            limits=_limits(max_connections), timeout=_timeout(timeouts)
        )
        self.client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,  # the gateway retries, once, for every provider alike
            timeout=_timeout(timeouts),
            http_client=http_client,
        )
        self._options: dict[str, Any] = {}  # per model: the SDK's request options, built once
        self.wire: ChatWire | None = None
        if transport == "direct":
            try:
                self.wire = ChatWire(
                    provider=name,
                    base_url=str(self.client.base_url),
                    headers=_sdk_headers(self.client),
                    timeouts=timeouts,
                    max_connections=max_connections,
                )
            except UnsupportedProxy as exc:  # the SDK's client speaks to it: chat through that
                log.warning("chat_through_sdk", provider=name, reason=str(exc))

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()
        await self.client.close()

    def _answer(self, entry: ModelEntry) -> Any:
        """Request options of a non-streaming call to ``entry`` (its read limit), cached."""
        options = self._options.get(entry.name)
        if options is None:
            read_s = self.timeouts.for_answer(entry)
            options = self._options[entry.name] = {
                "timeout": _timeout(self.timeouts, read_s=read_s)
            }
        return options

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        body = self._arguments(request, entry, stream=False)
        completion: Any
        if self.wire is not None:
            completion = await self.wire.complete(body, entry)
        else:
            # ``cast_to=object`` skips the SDK's response models: the answer is read straight
            # into our types.
            try:
                completion = await self.client.post(
                    "/chat/completions", cast_to=object, body=body, options=self._answer(entry)
                )
            except openai.OpenAIError as exc:
                raise self._error(exc, entry) from None
            except Exception as exc:
                raise _transport(exc, self.name, entry) from None
        return self._response(completion, entry)

    def _response(self, completion: Any, entry: ModelEntry) -> ChatResponse:
        try:
            choice = completion["choices"][0]
            message = choice["message"]
            calls = tuple(
                ToolCall(
                    id=call["id"],
                    name=call["function"]["name"],
                    arguments=call["function"].get("arguments") or "",
                )
                for call in (message.get("tool_calls") or ())
                if call.get("function") is not None
            )
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError("content")
            refusal = message.get("refusal")
            return ChatResponse(
                id=completion.get("id") or new_response_id(),
                model=entry.name,
                provider=self.name,
                message=Message(role="assistant", content=content, tool_calls=calls),
                finish_reason=_FINISH.get(choice.get("finish_reason") or "stop", "stop"),
                usage=_usage(completion.get("usage")),
                refusal=refusal if isinstance(refusal, str) else None,
            )
        except (LookupError, AttributeError, TypeError):
            raise UpstreamBadResponse(
                "The provider's answer was not a chat completion.",
                provider=self.name,
                model=entry.name,
            ) from None

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse:
        """``POST /embeddings`` through the SDK's client, vectors as base64 float32 (a quarter
        of the bytes of JSON numbers, decoded by numpy in one step; a server that ignores
        ``encoding_format`` and sends numbers is read too)."""
        body: dict[str, Any] = {
            "model": entry.model,
            "input": list(request.inputs),
            "encoding_format": "base64",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        try:
            result: Any = await self.client.post(
                "/embeddings",
                cast_to=object,
                body=body,
                options=self._answer(entry),
            )
        except openai.OpenAIError as exc:
            raise self._error(exc, entry) from None
        except Exception as exc:
            raise _transport(exc, self.name, entry) from None
        try:
            items = sorted(result["data"], key=lambda item: item.get("index", 0))
            vectors = np.stack([_vector(item["embedding"]) for item in items])
            if vectors.shape[0] != len(request.inputs):
                raise ValueError("one vector per input")
            usage = result.get("usage")
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        except (LookupError, AttributeError, TypeError, ValueError, binascii.Error):
            raise UpstreamBadResponse(
                "The provider's answer was not a list of embeddings.",
                provider=self.name,
                model=entry.name,
            ) from None
        return EmbeddingResponse(
            model=entry.name,
            provider=self.name,
            vectors=vectors,
            usage=Usage(input_tokens=tokens) if tokens else Usage(estimated=True),
        )

    async def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream:
        body = self._arguments(request, entry, stream=True)
        chunks = (
            self.wire.stream(body, entry)
            if self.wire is not None
            else self._sdk_chunks(body, entry)
        )
        finish: FinishReason | None = None
        usage: Usage | None = None
        started = False
        unindexed: dict[str, int] = {}  # tool call ids -> indexes, where the server sends none
        # Closed also when the caller stops early: the connection goes back to the pool.
        async with contextlib.aclosing(chunks):
            try:
                chunk: Any
                async for chunk in chunks:
                    if not started:
                        started = True
                        yield StreamStart(
                            id=chunk.get("id") or new_response_id(),
                            model=entry.name,
                            provider=self.name,
                        )
                    if chunk.get("usage") is not None:
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        if delta.get("refusal"):
                            yield RefusalDelta(delta["refusal"])
                        for call in delta.get("tool_calls") or ():
                            function = call.get("function") or {}
                            yield ToolCallDelta(
                                index=_call_index(call, unindexed),
                                id=call.get("id"),
                                name=function.get("name"),
                                arguments=function.get("arguments") or "",
                            )
                        if choice.get("finish_reason"):
                            finish = _FINISH.get(choice["finish_reason"], "stop")
            except (LookupError, AttributeError, TypeError):
                raise UpstreamBadResponse(
                    "The provider's stream had a chunk we could not read.",
                    provider=self.name,
                    model=entry.name,
                ) from None
        if finish is None:
            raise UpstreamUnavailable(
                "The provider's stream ended before the answer was complete.",
                provider=self.name,
                model=entry.name,
            )
        if not started:  # pragma: no cover - a finish implies a chunk
            yield StreamStart(id=new_response_id(), model=entry.name, provider=self.name)
        yield StreamEnd(finish_reason=finish, usage=usage or Usage(estimated=True))

    async def _sdk_chunks(
        self, body: dict[str, Any], entry: ModelEntry
    ) -> AsyncGenerator[Any, None]:
        """The stream's chunks as the SDK decodes them, its errors mapped to ours."""
        chunks: Any = None
        try:
            chunks = await self.client.post(
                "/chat/completions",
                cast_to=object,
                body=body,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async for chunk in chunks:
                yield chunk
        except openai.OpenAIError as exc:
            raise self._error(exc, entry) from None
        except Exception as exc:
            raise _transport(exc, self.name, entry) from None
        finally:
            if chunks is not None:  # give the connection back, also when closed early
                with contextlib.suppress(Exception):
                    await chunks.close()

    def _arguments(
        self, request: ChatRequest, entry: ModelEntry, *, stream: bool
    ) -> dict[str, Any]:
        params = request.params
        arguments: dict[str, Any] = {
            "model": entry.model,
            "messages": [_message(m) for m in request.messages],
        }
        optional = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "stop": list(params.stop) or None,
        }
        arguments.update({k: v for k, v in optional.items() if v is not None})
        if params.max_tokens is not None:
            key = "max_completion_tokens" if self._official else "max_tokens"
            arguments[key] = params.max_tokens
        if request.tools:
            arguments["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "parameters": tool.parameters,
                        **({"description": tool.description} if tool.description else {}),
                        # Sent only when asked: false is the default, and some compatible
                        # servers refuse fields they do not know.
                        **({"strict": True} if tool.strict else {}),
                    },
                }
                for tool in request.tools
            ]
            if request.parallel_tool_calls is not None:  # OpenAI takes it with tools only
                arguments["parallel_tool_calls"] = request.parallel_tool_calls
        if request.tool_choice is not None:
            choice = request.tool_choice
            arguments["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if choice.mode == "tool"
                else choice.mode
            )
        response_format = request.response_format
        if response_format is not None and response_format.type == "json_schema":
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": response_format.name or "response",
                    "schema": response_format.schema or {},
                    "strict": response_format.strict,
                },
            }
        elif response_format is not None and response_format.type == "json_object":
            arguments["response_format"] = {"type": "json_object"}
        if stream:
            arguments["stream"] = True
            arguments["stream_options"] = {"include_usage": True}
        return arguments

    def _error(self, exc: openai.OpenAIError, entry: ModelEntry) -> LLMError:
        return map_openai_error(exc, provider=self.name, model=entry.name)


def map_openai_error(exc: openai.OpenAIError, *, provider: str, model: str) -> LLMError:
    """One place for every SDK error. Upstream messages are not passed on: they can quote
    our request or a masked key; the status and the class are enough for the caller."""
    where = {"provider": provider, "model": model}
    if (isinstance(exc, openai.APIStatusError) and exc.status_code < 400) or type(
        exc
    ) is openai.APIError:
        # An error event inside a stream that began with 200: the SDK raises it as a plain
        # ``APIError`` (older versions as a status error with the stream's 200).
        return UpstreamUnavailable(f"{provider} failed in the middle of its answer.", **where)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(f"{provider} did not answer in time.", **where)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamUnavailable(f"{provider} could not be reached.", **where)
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, provider=provider, model=model, response=exc.response)
    return UpstreamBadResponse(f"{provider} sent an answer we could not read.", **where)


def _transport(exc: Exception, provider: str, entry: ModelEntry) -> LLMError:
    return transport_error(exc, provider=provider, model=entry.name)


def _usage(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage(estimated=True)
    details = usage.get("prompt_tokens_details")
    cached = (details.get("cached_tokens") if isinstance(details, dict) else None) or 0
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_input_tokens=cached,
    )


def _vector(embedding: Any) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4").astype(
            np.float32
        )
    if not isinstance(embedding, list) or not embedding:
        raise TypeError("embedding")
    return np.asarray(embedding, dtype=np.float32)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _timeout(timeouts: Timeouts, *, read_s: float | None = None) -> Any:
    import httpx2

    return httpx2.Timeout(read_s or timeouts.read_s, connect=timeouts.connect_s)


def _limits(max_connections: int) -> Any:
    import httpx2

    return httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def _sdk_headers(client: openai.AsyncOpenAI) -> dict[str, str]:
    """Every header the SDK's client sends on its own (key, user agent, platform), so the
    direct path introduces itself to the provider exactly as the SDK does."""
    headers = {**client.default_headers, **client.auth_headers}
    sent = {name: value for name, value in headers.items() if isinstance(value, str)}
    sent["X-Stainless-Retry-Count"] = "0"
    return sent
