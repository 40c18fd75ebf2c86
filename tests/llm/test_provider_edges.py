"""Provider adapters at their edges, as the /v1 API and the official SDK see them: Bedrock's
mid-stream exception events, tools without arguments, tool history with no tools on offer,
OpenAI's refusals, and Retry-After values that are no number of seconds."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from botocore.eventstream import EventStream
from botocore.parsers import EventStreamJSONParser
from sqlalchemy.engine import URL

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import UpstreamRateLimited, UpstreamUnavailable
from mainsail.llm.factory import build_gateway
from mainsail.llm.gateway import CallContext
from mainsail.llm.providers.anthropic import AnthropicAdapter
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.providers.bedrock import BedrockAdapter
from mainsail.llm.types import (
    ChatRequest,
    Message,
    StreamEnd,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
)
from mainsail.openai_compat.schemas import completion_json
from mainsail.settings import LLMSettings, Settings
from tests.fakes.canned import Canned
from tests.fakes.provider_server import FakeProviderServer, Fault
from tests.fixtures.gateway import FAST_RESILIENCE, gateway_settings
from tests.openai_compat.conftest import LiveMainsail, live  # noqa: F401  (fixture)

ENTRY = ModelEntry(
    name="public-name",
    provider="p",
    model="upstream-model",
    input_per_mtok=Decimal(1),
    output_per_mtok=Decimal(2),
    context_window=4000,
    max_output_tokens=1000,
)
NOW_TOOL = ToolDefinition(name="now", parameters={"type": "object", "properties": {}})


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    """The live app routes its models to the fake provider (as in tests/openai_compat)."""
    return gateway_settings(database_url, catalogue_file)


# --- a one-answer HTTP server, for upstream answers the shared fake cannot give -----------


def _anthropic_event(kind: str, **data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


# --- 1. Anthropic: a streamed tool call without arguments -----------------------------------


async def test_anthropic_streamed_tool_call_without_arguments_has_json_arguments() -> None:
    """A tool with no parameters: Anthropic streams the call's input as one
    ``input_json_delta`` whose ``partial_json`` is empty (the block starts with ``input: {}``).
    The non-streamed answer gives arguments ``"{}"`` (json.dumps of the input); the streamed
    one must add up to valid JSON too, as OpenAI's does, or the caller's ``json.loads`` (the
    SDK's parse helpers, LangChain) fails on ``""``."""
    body = "".join(
        [
            _anthropic_event(
                "message_start",
                message={
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "upstream-model",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            ),
            _anthropic_event(
                "content_block_start",
                index=0,
                content_block={"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            ),
            _anthropic_event(
                "content_block_delta",
                index=0,
                delta={"type": "input_json_delta", "partial_json": ""},
            ),
            _anthropic_event("content_block_stop", index=0),
            _anthropic_event(
                "message_delta",
                delta={"stop_reason": "tool_use", "stop_sequence": None},
                usage={"output_tokens": 9},
            ),
            _anthropic_event("message_stop"),
        ]
    ).encode()
    request = ChatRequest(
        model="public-name",
        messages=(Message(role="user", content="What time is it?"),),
        tools=(NOW_TOOL,),
    )
    async with Canned(body, "text/event-stream") as url:
        adapter = AnthropicAdapter(
            name="p", api_key="k", base_url=url, timeouts=Timeouts(), max_connections=2
        )
        try:
            events = [event async for event in adapter.stream(request, ENTRY)]
        finally:
            await adapter.aclose()
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas
    assert deltas[0].name == "now"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    arguments = "".join(d.arguments for d in deltas)
    assert json.loads(arguments) == {}


# --- 2. Bedrock: an exception event inside ConverseStream ------------------------------------


def _eventstream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of AWS's binary event-stream encoding (string headers only)."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        encoded += struct.pack("B", len(raw_name)) + raw_name
        encoded += b"\x07" + struct.pack(">H", len(raw_value)) + raw_value
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


class _RawBody:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self) -> Iterator[bytes]:
        yield self.data

    def close(self) -> None:
        return None


class _ConverseStreamClient:
    """boto3's client for ConverseStream whose stream is decoded by botocore itself (a real
    ``EventStream`` over the wire bytes), so exception events surface exactly as boto3 raises
    them: an ``EventStreamError`` whose code is the event's ``:exception-type``."""

    def __init__(self, exception_type: str) -> None:
        self.exception_type = exception_type
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            aws_access_key_id="AKIATEST",
            aws_secret_access_key="secret",
        )
        operation = client.meta.service_model.operation_model("ConverseStream")
        self.shape = operation.output_shape.members["stream"]

    def converse_stream(self, **kwargs: Any) -> dict[str, Any]:
        data = _eventstream_message(
            {
                ":message-type": "event",
                ":event-type": "messageStart",
                ":content-type": "application/json",
            },
            json.dumps({"role": "assistant"}).encode(),
        ) + _eventstream_message(
            {
                ":message-type": "exception",
                ":exception-type": self.exception_type,
                ":content-type": "application/json",
            },
            json.dumps({"message": "try again later"}).encode(),
        )
        stream = EventStream(_RawBody(data), self.shape, EventStreamJSONParser(), "ConverseStream")
        return {"stream": stream}

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("exception_type", "expected"),
    [
        ("throttlingException", UpstreamRateLimited),
        ("modelStreamErrorException", UpstreamUnavailable),
        ("internalServerException", UpstreamUnavailable),
        ("serviceUnavailableException", UpstreamUnavailable),
    ],
)
async def test_bedrock_stream_exception_events_are_retryable(
    exception_type: str, expected: type[Exception]
) -> None:
    """Bedrock reports throttling and its own failures inside ConverseStream as exception
    events; botocore raises them with the member's name as the code (``throttlingException``,
    lower camel case). They map as their PascalCase names do (they were an unknown code, a 400
    with no retry and no fallback, for a rate limit or a provider fault)."""
    adapter = BedrockAdapter(
        name="bedrock",
        region="us-east-1",
        timeouts=Timeouts(),
        max_connections=2,
        client=_ConverseStreamClient(exception_type),
    )
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))
    with pytest.raises(expected):
        async for _ in adapter.stream(request, ENTRY):
            pass


# --- 3. Bedrock: tool_choice "none" with tool calls in the history ---------------------------


class _ConverseClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def converse(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": "It is noon."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 14},
        }

    def close(self) -> None:
        return None


async def test_bedrock_tool_choice_none_tells_the_tool_history_as_text() -> None:
    """After a tool round trip, ``tool_choice: "none"`` asks for a text answer. Converse
    refuses toolUse / toolResult blocks without a ``toolConfig`` ("The toolConfig field must
    be defined when using toolUse and toolResult content blocks") and has no choice that calls
    no tool: the history's call and result go as text, so the model still reads them."""
    client = _ConverseClient()
    adapter = BedrockAdapter(
        name="bedrock", region="us-east-1", timeouts=Timeouts(), max_connections=2, client=client
    )
    history = (
        Message(role="user", content="What time is it?"),
        Message(role="assistant", tool_calls=(ToolCall(id="t1", name="now", arguments="{}"),)),
        Message(role="tool", tool_call_id="t1", content="12:00"),
    )
    for request in (
        ChatRequest(
            model="m", messages=history, tools=(NOW_TOOL,), tool_choice=ToolChoice(mode="none")
        ),
        ChatRequest(model="m", messages=history),  # no tools offered at all
    ):
        await adapter.complete(request, ENTRY)
        sent = client.calls.pop()
        blocks = [block for message in sent["messages"] for block in message["content"]]
        assert "toolConfig" not in sent
        assert not any("toolUse" in block or "toolResult" in block for block in blocks)
        texts = " ".join(block["text"] for block in blocks)
        assert "Called tool now (t1) with {}" in texts
        assert "Result of tool call t1: 12:00" in texts
    await adapter.complete(
        ChatRequest(model="m", messages=history, tools=(NOW_TOOL,)), ENTRY
    )  # tools offered: the blocks stay blocks
    sent = client.calls.pop()
    assert "toolConfig" in sent
    blocks = [block for message in sent["messages"] for block in message["content"]]
    assert any("toolUse" in block for block in blocks)
    assert any("toolResult" in block for block in blocks)


# --- 4. OpenAI: a refusal is lost -------------------------------------------------------------


async def test_openai_refusal_reaches_the_v1_answer(tmp_path: Path) -> None:
    """OpenAI answers a refused structured-output request with ``content: null`` and the text
    in ``message.refusal`` (the SDK's ``message.refusal``; ``parse()`` relies on it): /v1
    passes the reason on (it wrote ``refusal: null``, an empty answer with no reason)."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": "I'm sorry, I can't help with that.",
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
    }
    async with Canned(json.dumps(answer).encode(), "application/json") as url:
        catalogue = tmp_path / "catalogue.toml"
        catalogue.write_text(
            f'[providers.canned]\nkind = "openai"\nbase_url = "{url}/v1"\n\n'
            '[models.canned-gpt]\nprovider = "canned"\nmodel = "upstream-model"\n'
        )
        settings = LLMSettings(**{**FAST_RESILIENCE, "catalogue_file": catalogue})
        gateway, adapters = build_gateway(settings, environ={})
        try:
            response = await gateway.complete(
                ChatRequest(
                    model="canned-gpt", messages=(Message(role="user", content="Do a bad thing"),)
                ),
                CallContext(),
            )
        finally:
            for adapter in adapters:
                await adapter.aclose()
    message = completion_json(response, created=0)["choices"][0]["message"]
    assert message["content"] is None
    assert message["refusal"] == "I'm sorry, I can't help with that."


# --- 5. A provider's Retry-After that is not a finite number ----------------------------------


async def test_a_non_finite_retry_after_is_ignored(
    live: LiveMainsail,  # noqa: F811
    fake_provider: FakeProviderServer,
) -> None:
    """``Retry-After: inf`` from an upstream (a proxy, a compatible server) parses as
    ``float('inf')``; shaping the 429 with ``round(inf)`` raised ``OverflowError`` in the
    error handler (the SDK got a 500). Such a header says nothing: the call is retried on the
    usual backoff, and when every attempt is refused the caller gets a plain 429."""
    sdk = openai.AsyncOpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0)
    ask = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    fake_provider.script(Fault("rate_limit", retry_after=float("inf")))
    answer = await sdk.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert answer.choices[0].message.content
    fake_provider.script(*[Fault("rate_limit", retry_after=float("nan"))] * 3)
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert "retry-after" not in refused.value.response.headers
