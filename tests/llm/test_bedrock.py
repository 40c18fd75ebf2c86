"""Bedrock's Converse mapping, against botocore's Stubber (which validates request and
response shapes against the real service model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    LLMError,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.providers.bedrock import BedrockAdapter
from mainsail.llm.types import (
    ChatRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolDefinition,
)

ENTRY = ModelEntry(
    name="bedrock-nova-micro",
    provider="bedrock",
    model="amazon.nova-micro-v1:0",
    input_per_mtok=Decimal("0.035"),
    output_per_mtok=Decimal("0.14"),
)


@pytest.fixture
def bedrock() -> Iterator[tuple[BedrockAdapter, Stubber]]:
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIATEST",
        aws_secret_access_key="secret",
    )
    stubber = Stubber(client)
    adapter = BedrockAdapter(
        name="bedrock", region="us-east-1", timeouts=Timeouts(), max_connections=4, client=client
    )
    with stubber:
        yield adapter, stubber
    stubber.assert_no_pending_responses()


def converse_reply(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {
            "inputTokens": 11,
            "outputTokens": 4,
            "totalTokens": 15,
            "cacheReadInputTokens": 5,
        },
        "metrics": {"latencyMs": 42},
    }


async def test_converse_request_and_answer(bedrock: tuple[BedrockAdapter, Stubber]) -> None:
    adapter, stubber = bedrock
    stubber.add_response(
        "converse",
        converse_reply([{"text": "Hello!"}]),
        expected_params={
            "modelId": "amazon.nova-micro-v1:0",
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "inferenceConfig": {"maxTokens": 64, "temperature": 0.1},
        },
    )
    request = ChatRequest(
        model="bedrock-nova-micro",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content="hi")),
        params=SamplingParams(max_tokens=64, temperature=0.1),
    )
    response = await adapter.complete(request, ENTRY)
    assert response.message.content == "Hello!"
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.cached_input_tokens) == (16, 5)
    assert response.usage.output_tokens == 4


async def test_tool_use_round_trip(bedrock: tuple[BedrockAdapter, Stubber]) -> None:
    adapter, stubber = bedrock
    tool = ToolDefinition(name="lookup", parameters={"type": "object"}, description="Look up")
    stubber.add_response(
        "converse",
        converse_reply(
            [{"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": "x"}}}], "tool_use"
        ),
    )
    call = ToolCall(id="t1", name="lookup", arguments='{"q": "x"}')
    stubber.add_response(
        "converse",
        converse_reply([{"text": "done"}]),
        expected_params={
            "modelId": "amazon.nova-micro-v1:0",
            "messages": [
                {"role": "user", "content": [{"text": "find x"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": "x"}}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "42"}]}}],
                },
            ],
            "inferenceConfig": {"maxTokens": 4096},
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "lookup",
                            "description": "Look up",
                            "inputSchema": {"json": {"type": "object"}},
                        }
                    }
                ]
            },
        },
    )
    first = await adapter.complete(
        ChatRequest(model="m", messages=(Message(role="user", content="find x"),), tools=(tool,)),
        ENTRY,
    )
    assert first.finish_reason == "tool_calls"
    assert first.message.tool_calls[0] == call
    follow_up = ChatRequest(
        model="m",
        messages=(
            Message(role="user", content="find x"),
            Message(role="assistant", tool_calls=(call,)),
            Message(role="tool", tool_call_id="t1", content="42"),
        ),
        tools=(tool,),
    )
    assert (await adapter.complete(follow_up, ENTRY)).message.content == "done"


async def test_json_schema_output_is_a_forced_tool(bedrock: tuple[BedrockAdapter, Stubber]) -> None:
    adapter, stubber = bedrock
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    stubber.add_response(
        "converse",
        converse_reply(
            [{"toolUse": {"toolUseId": "s", "name": "structured_answer", "input": {"n": 3}}}],
            "tool_use",
        ),
    )
    request = ChatRequest(
        model="m",
        messages=(Message(role="user", content="count"),),
        response_format=ResponseFormat(type="json_schema", name="n", schema=schema),
    )
    response = await adapter.complete(request, ENTRY)
    assert json.loads(response.message.content or "") == {"n": 3}
    assert response.finish_reason == "stop"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("ThrottlingException", 429, UpstreamRateLimited),
        ("ServiceUnavailableException", 503, UpstreamUnavailable),
        ("ModelNotReadyException", 429, UpstreamUnavailable),
        ("AccessDeniedException", 403, UpstreamMisconfigured),
        ("ValidationException", 400, UpstreamRejected),
    ],
)
async def test_service_errors_map_to_the_shared_vocabulary(
    bedrock: tuple[BedrockAdapter, Stubber], code: str, status: int, expected: type[LLMError]
) -> None:
    adapter, stubber = bedrock
    stubber.add_client_error("converse", service_error_code=code, http_status_code=status)
    with pytest.raises(expected):
        await adapter.complete(
            ChatRequest(model="m", messages=(Message(role="user", content="hi"),)), ENTRY
        )


class StreamingClient:
    """Stands in for boto3's client on the one call Stubber cannot fake: an event stream."""

    def __init__(self, events: list[dict[str, Any]], *, fail_after: int | None = None) -> None:
        self.events, self.fail_after = events, fail_after
        self.calls: list[dict[str, Any]] = []

    def converse_stream(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)

        def stream() -> Iterator[dict[str, Any]]:
            for index, event in enumerate(self.events):
                if self.fail_after is not None and index == self.fail_after:
                    from botocore.exceptions import ReadTimeoutError

                    raise ReadTimeoutError(endpoint_url="https://bedrock")
                yield event

        return {"stream": stream()}

    def close(self) -> None:
        return None


STREAM = [
    {"messageStart": {"role": "assistant"}},
    {"contentBlockDelta": {"delta": {"text": "Hel"}, "contentBlockIndex": 0}},
    {"contentBlockDelta": {"delta": {"text": "lo"}, "contentBlockIndex": 0}},
    {
        "contentBlockStart": {
            "start": {"toolUse": {"toolUseId": "t9", "name": "lookup"}},
            "contentBlockIndex": 1,
        }
    },
    {"contentBlockDelta": {"delta": {"toolUse": {"input": '{"q": '}}, "contentBlockIndex": 1}},
    {"contentBlockDelta": {"delta": {"toolUse": {"input": '"y"}'}}, "contentBlockIndex": 1}},
    {"messageStop": {"stopReason": "tool_use"}},
    {"metadata": {"usage": {"inputTokens": 9, "outputTokens": 6, "totalTokens": 15}}},
]


async def test_converse_stream_maps_text_tools_and_usage() -> None:
    from mainsail.llm.types import StreamEnd, StreamStart, TextDelta, ToolCallDelta

    adapter = BedrockAdapter(
        name="bedrock",
        region="us-east-1",
        timeouts=Timeouts(),
        max_connections=2,
        client=StreamingClient(STREAM),
    )
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))
    events = [e async for e in adapter.stream(request, ENTRY)]
    assert isinstance(events[0], StreamStart)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].name == "lookup"
    assert json.loads("".join(d.arguments for d in deltas)) == {"q": "y"}
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.finish_reason, end.usage.input_tokens, end.usage.output_tokens) == (
        "tool_calls",
        9,
        6,
    )


async def test_converse_stream_failure_is_mapped_not_swallowed() -> None:
    from mainsail.llm.errors import UpstreamTimeout

    adapter = BedrockAdapter(
        name="bedrock",
        region="us-east-1",
        timeouts=Timeouts(),
        max_connections=2,
        client=StreamingClient(STREAM, fail_after=2),
    )
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))
    with pytest.raises(UpstreamTimeout):
        async for _ in adapter.stream(request, ENTRY):
            pass


async def test_converse_stream_tool_without_arguments_reads_as_json() -> None:
    """A tool with no parameters may stream an empty input (or none) before its block stops:
    its arguments are "{}", as unstreamed, not "" (which no client can ``json.loads``)."""
    from mainsail.llm.types import ToolCallDelta

    events = [
        {"messageStart": {"role": "assistant"}},
        {
            "contentBlockStart": {
                "start": {"toolUse": {"toolUseId": "t1", "name": "now"}},
                "contentBlockIndex": 0,
            }
        },
        {"contentBlockDelta": {"delta": {"toolUse": {"input": ""}}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {
            "contentBlockStart": {
                "start": {"toolUse": {"toolUseId": "t2", "name": "today"}},
                "contentBlockIndex": 1,
            }
        },
        {"contentBlockStop": {"contentBlockIndex": 1}},
        {"messageStop": {"stopReason": "tool_use"}},
    ]
    adapter = BedrockAdapter(
        name="bedrock",
        region="us-east-1",
        timeouts=Timeouts(),
        max_connections=2,
        client=StreamingClient(events),
    )
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),))
    deltas = [e async for e in adapter.stream(request, ENTRY) if isinstance(e, ToolCallDelta)]
    for index in (0, 1):
        arguments = "".join(d.arguments for d in deltas if d.index == index)
        assert json.loads(arguments) == {}
