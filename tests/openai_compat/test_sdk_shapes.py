"""The /v1 chat completions surface as the official openai SDK uses it, against
upstream answers in OpenAI's and Anthropic's shapes (the shared fake, and a canned upstream
for answers the fake cannot give)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy.engine import URL

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.providers.bedrock import BedrockAdapter
from mainsail.llm.types import ChatRequest, Message, ResponseFormat, ToolDefinition
from mainsail.settings import Settings
from tests.fakes.canned import Canned, chat_chunk
from tests.fakes.provider_server import FakeProviderServer, Reply, ToolCall
from tests.fixtures.gateway import gateway_settings
from tests.openai_compat.conftest import LiveMainsail
from tests.openai_compat.test_sdk import WEATHER_TOOL, client

CANNED_MODELS = """
[providers.canned]
kind = "openai"
base_url = "{url}/v1"

[models.canned-gpt]
provider = "canned"
model = "upstream-model"
context_window = 4000
max_output_tokens = 1000
"""


@pytest.fixture
async def canned() -> AsyncIterator[tuple[Canned, str]]:
    """One fixed upstream answer (set ``body`` and ``content_type`` per test)."""
    upstream = Canned(b"", "text/event-stream")
    async with upstream as url:
        yield upstream, url


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path, canned: tuple[Canned, str]) -> Settings:
    """The fake provider's models, and ``canned-gpt`` on the canned upstream."""
    catalogue_file.write_text(catalogue_file.read_text() + CANNED_MODELS.format(url=canned[1]))
    return gateway_settings(database_url, catalogue_file)


REFUSAL = "I'm sorry, I can't help with that."
REFUSED_STREAM = (
    chat_chunk({"role": "assistant", "content": None, "refusal": ""})
    + chat_chunk({"refusal": "I'm sorry, "})
    + chat_chunk({"refusal": "I can't help with that."})
    + chat_chunk({}, "stop")
    + "data: [DONE]\n\n"
).encode()


async def test_streamed_refusal_reaches_v1_stream_clients(
    live: LiveMainsail, canned: tuple[Canned, str]
) -> None:
    """OpenAI streams a refusal as ``delta.refusal`` pieces (``content`` stays empty): the
    SDK's ``delta.refusal`` (and ``chat.completions.stream()``'s ``refusal.delta`` events)
    must carry it, as the non-streamed ``message.refusal`` does."""
    upstream, _ = canned
    upstream.body, upstream.content_type = REFUSED_STREAM, "text/event-stream"
    stream = await client(live).chat.completions.create(
        model="canned-gpt",
        messages=[{"role": "user", "content": "Do a bad thing"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    refusal = "".join(c.choices[0].delta.refusal or "" for c in chunks if c.choices)
    assert refusal == REFUSAL
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The upstream reported no usage: the refusal's tokens are estimated, not 0.
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_stream_null_is_the_default_as_in_openais_schema(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    """OpenAI's request schema makes ``stream`` nullable (``boolean | null``, default false),
    as every other optional field here already is; clients that serialise unset options as
    ``null`` get a JSON answer, not a 400 ``stream: Input should be a valid boolean``."""
    fake_provider.script(Reply(text="hello"))
    async with httpx.AsyncClient(base_url=live.v1) as http:
        answer = await http.post(
            "/chat/completions",
            json={
                "model": "fake-gpt",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": None,
                "stream_options": None,
            },
            headers={"Authorization": f"Bearer {live.api_key}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello"


class Weather(BaseModel):
    city: str
    celsius: float


WEATHER_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "Weather",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}


async def test_anthropic_keeps_the_callers_tools_beside_a_json_schema_answer(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    """OpenAI takes ``tools`` and ``response_format: json_schema`` together (the model calls
    tools, then gives its final answer in the schema; the OpenAI Agents SDK's ``output_type``
    with tools sends exactly this). Through Mainsail to a Claude model the caller's tools
    were dropped: the upstream was offered only the structured-answer tool, forced, so the
    model could never call ``get_weather``."""
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Oslo"}),)))
    completion = await client(live).chat.completions.create(
        model="fake-claude",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        response_format=WEATHER_FORMAT,  # type: ignore[arg-type]
    )
    offered = [tool["name"] for tool in fake_provider.calls[-1].body.get("tools", [])]
    assert "get_weather" in offered
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", ["fake-gpt", "fake-claude"])
async def test_stream_helper_accumulates_text_and_parallel_tool_calls(
    live: LiveMainsail, fake_provider: FakeProviderServer, model: str
) -> None:
    """``client.chat.completions.stream()`` builds the final message from the deltas: text,
    then two tool calls, each with its id, type, name and whole JSON arguments."""
    fake_provider.script(
        Reply(
            text="Looking both up.",
            tool_calls=(
                ToolCall("get_weather", {"city": "Oslo"}),
                ToolCall("get_weather", {"city": "Rome"}),
            ),
        )
    )
    async with client(live).chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "weather in Oslo and Rome?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Looking both up."
    calls = message.tool_calls or []
    assert [(c.type, c.function.name) for c in calls] == [("function", "get_weather")] * 2
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert len({c.id for c in calls}) == 2
    assert all(c.id for c in calls)
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["fake-gpt", "fake-claude"])
async def test_parse_with_a_pydantic_response_format(
    live: LiveMainsail, fake_provider: FakeProviderServer, model: str
) -> None:
    """``client.chat.completions.parse(response_format=Model)`` gets ``message.parsed``."""
    answer = {"city": "Oslo", "celsius": 4.5}
    if model == "fake-claude":  # the structured answer comes as the forced tool's input
        fake_provider.script(Reply(tool_calls=(ToolCall("structured_answer", answer),)))
    else:
        fake_provider.script(Reply(text=json.dumps(answer)))
    completion = await client(live).chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        response_format=Weather,
    )
    assert completion.choices[0].message.parsed == Weather(city="Oslo", celsius=4.5)


@pytest.mark.parametrize("answer_with", ["structured_answer", "get_weather"])
async def test_anthropic_streams_a_schema_answer_or_a_tool_call_with_tools_offered(
    live: LiveMainsail, fake_provider: FakeProviderServer, answer_with: str
) -> None:
    """Streamed, with tools beside a JSON-schema answer: the answer tool's input is the text
    (``parsed`` by the SDK's stream helper), a call of the caller's tool stays a tool call."""
    arguments = (
        {"city": "Oslo", "celsius": 4.5} if answer_with == "structured_answer" else {"city": "Oslo"}
    )
    fake_provider.script(Reply(tool_calls=(ToolCall(answer_with, arguments),)))
    async with client(live).chat.completions.stream(
        model="fake-claude",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        response_format=Weather,
    ) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    if answer_with == "structured_answer":
        assert choice.message.parsed == Weather(city="Oslo", celsius=4.5)
        assert not choice.message.tool_calls
        assert choice.finish_reason == "stop"
    else:
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Oslo"}
        assert choice.finish_reason == "tool_calls"


class RecordingBedrock:
    """Stands in for boto3's bedrock-runtime client: records ``converse`` calls, answers
    with one tool call."""

    def __init__(self, name: str, arguments: dict[str, Any]) -> None:
        self.name, self.arguments = name, arguments
        self.calls: list[dict[str, Any]] = []

    def converse(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        use = {"toolUseId": "t1", "name": self.name, "input": self.arguments}
        return {
            "output": {"message": {"role": "assistant", "content": [{"toolUse": use}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 5, "outputTokens": 5, "totalTokens": 10},
        }

    def close(self) -> None:
        return None


async def test_bedrock_keeps_the_callers_tools_beside_a_json_schema_answer() -> None:
    """As for Anthropic: Converse was offered only the forced structured-answer tool, so a
    request with tools and ``response_format: json_schema`` could never call a tool."""
    client_ = RecordingBedrock("get_weather", {"city": "Oslo"})
    adapter = BedrockAdapter(
        name="bedrock", region="us-east-1", timeouts=Timeouts(), max_connections=2, client=client_
    )
    fmt = WEATHER_FORMAT["json_schema"]
    request = ChatRequest(
        model="m",
        messages=(Message(role="user", content="weather in Oslo?"),),
        tools=(
            ToolDefinition(name="get_weather", parameters=WEATHER_TOOL["function"]["parameters"]),
        ),
        response_format=ResponseFormat(type="json_schema", name="Weather", schema=fmt["schema"]),
    )
    entry = ModelEntry(name="b", provider="bedrock", model="amazon.nova-micro-v1:0")
    try:
        response = await adapter.complete(request, entry)
    finally:
        await adapter.aclose()
    offered = [t["toolSpec"]["name"] for t in client_.calls[-1]["toolConfig"]["tools"]]
    assert "get_weather" in offered
    assert [call.name for call in response.message.tool_calls] == ["get_weather"]
    assert response.finish_reason == "tool_calls"


def _call(call_id: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    """A streamed tool call piece as some compatible servers send it: no ``index``."""
    function = {"arguments": arguments} | ({"name": name} if name else {})
    return (
        {"id": call_id, "type": "function", "function": function}
        if call_id
        else {"function": function}
    )


UNINDEXED_CALLS = (
    chat_chunk({"role": "assistant", "content": None})
    + chat_chunk({"tool_calls": [_call("call_a", "get_weather", '{"city": ')]})
    + chat_chunk({"tool_calls": [_call(None, None, '"Oslo"}')]})
    + chat_chunk({"tool_calls": [_call("call_b", "get_weather", '{"city": "Bergen"}')]})
    + chat_chunk({}, "tool_calls")
    + "data: [DONE]\n\n"
).encode()


async def test_parallel_tool_calls_streamed_without_an_index_stay_apart(
    live: LiveMainsail, canned: tuple[Canned, str]
) -> None:
    """A compatible server that leaves ``index`` out of its tool call pieces: each new call id
    is the next call, and a piece without an id continues the last (they used to merge into
    one call at index 0 with both argument strings run together)."""
    upstream, _ = canned
    upstream.body, upstream.content_type = UNINDEXED_CALLS, "text/event-stream"
    stream = await client(live).chat.completions.create(
        model="canned-gpt",
        messages=[{"role": "user", "content": "Weather in Oslo and Bergen?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        1: {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Bergen"}'},
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_json_object_mode_reaches_claude_as_a_forced_json_answer(
    live: LiveMainsail, fake_provider: FakeProviderServer, stream: bool
) -> None:
    """``response_format: {"type": "json_object"}`` (LangChain's json mode) was dropped on the
    way to Claude, so nothing held its answer to JSON: it is now asked for through the answer
    tool with an object schema, and the tool's input is the answer."""
    fake_provider.script(
        Reply(tool_calls=(ToolCall("structured_answer", {"city": "Oslo", "celsius": 3}),))
    )
    arguments: dict[str, Any] = {
        "model": "fake-claude",
        "messages": [{"role": "user", "content": "Oslo's weather as JSON"}],
        "response_format": {"type": "json_object"},
    }
    if stream:
        chunks = [
            c async for c in await client(live).chat.completions.create(**arguments, stream=True)
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        completion = await client(live).chat.completions.create(**arguments)
        text, finish = (
            completion.choices[0].message.content or "",
            completion.choices[0].finish_reason,
        )
    body = fake_provider.calls[-1].body
    assert body["tool_choice"] == {"type": "tool", "name": "structured_answer"}
    assert [tool["input_schema"] for tool in body["tools"]] == [{"type": "object"}]
    assert json.loads(text) == {"city": "Oslo", "celsius": 3}
    assert finish == "stop"
