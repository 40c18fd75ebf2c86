"""Provider adapters against a real HTTP fake, through the official SDKs (never mocked), and
OpenAI chat also over the adapter's direct path (``transport="direct"``), which must behave
the same in every test here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal

import pytest

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    LLMError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.providers.anthropic import AnthropicAdapter
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.providers.openai import OpenAIAdapter
from mainsail.llm.types import (
    ChatRequest,
    Message,
    ResponseFormat,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.fakes.provider_server import ToolCall as FakeToolCall

ENTRY = ModelEntry(
    name="public-name",
    provider="p",
    model="fake-model",
    input_per_mtok=Decimal(1),
    output_per_mtok=Decimal(2),
    context_window=4000,
    max_output_tokens=1000,
)
WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def question(text: str = "hello there", **kwargs: object) -> ChatRequest:
    return ChatRequest(
        model="public-name",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content=text)),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["openai", "openai-sdk", "anthropic"])
async def adapter(
    request: pytest.FixtureRequest, fake_provider: FakeProviderServer
) -> AsyncIterator[OpenAIAdapter | AnthropicAdapter]:
    timeouts = Timeouts(connect_s=1, read_s=0.5, total_s=0.5)
    built: OpenAIAdapter | AnthropicAdapter
    if request.param.startswith("openai"):
        built = OpenAIAdapter(
            name="p",
            api_key="k",
            base_url=fake_provider.openai_base_url,
            timeouts=timeouts,
            max_connections=8,
            transport="sdk" if request.param == "openai-sdk" else "direct",
        )
    else:
        built = AnthropicAdapter(
            name="p",
            api_key="k",
            base_url=fake_provider.anthropic_base_url,
            timeouts=timeouts,
            max_connections=8,
        )
    yield built
    await built.aclose()


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


async def test_completion_maps_text_usage_and_public_name(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Hi!", input_tokens=12, output_tokens=3))
    response = await adapter.complete(question(), ENTRY)
    assert response.message.content == "Hi!"
    assert response.model == "public-name"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(input_tokens=12, output_tokens=3)
    sent = fake_provider.calls[-1].body
    assert sent["model"] == "fake-model"


async def test_system_prompt_reaches_the_provider_in_its_own_place(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    await adapter.complete(question(), ENTRY)
    sent = fake_provider.calls[-1].body
    if isinstance(adapter, AnthropicAdapter):
        assert sent["system"] == "Be brief."
        assert [m["role"] for m in sent["messages"]] == ["user"]
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_tool_calls_round_trip(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(FakeToolCall("get_weather", {"city": "Oslo"}),)))
    response = await adapter.complete(
        question("weather?", tools=(WEATHER,), tool_choice=ToolChoice(mode="required")), ENTRY
    )
    assert response.finish_reason == "tool_calls"
    (call,) = response.message.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    # The answer to the call goes back as the provider expects it.
    follow_up = ChatRequest(
        model="public-name",
        messages=(
            Message(role="user", content="weather?"),
            Message(role="assistant", tool_calls=(call,)),
            Message(role="tool", tool_call_id=call.id, content="sunny"),
        ),
        tools=(WEATHER,),
    )
    await adapter.complete(follow_up, ENTRY)
    sent = fake_provider.calls[-1].body["messages"]
    if isinstance(adapter, AnthropicAdapter):
        assert sent[-1]["role"] == "user"
        assert sent[-1]["content"][0]["type"] == "tool_result"
        assert sent[-1]["content"][0]["tool_use_id"] == call.id
    else:
        assert sent[-1] == {"role": "tool", "content": "sunny", "tool_call_id": call.id}


async def test_stream_yields_start_deltas_and_an_end_with_usage(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="one two three four", input_tokens=7, output_tokens=4))
    events = await collect(adapter.stream(question(), ENTRY))
    assert isinstance(events[0], StreamStart)
    assert events[0].model == "public-name"
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "one two three four"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "stop"
    assert end.usage.output_tokens == 4
    assert end.usage.input_tokens == 7


async def test_streamed_tool_call_arguments_reassemble(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(FakeToolCall("get_weather", {"city": "Rome"}),)))
    events = await collect(adapter.stream(question("weather?", tools=(WEATHER,)), ENTRY))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].name == "get_weather"
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Rome"}
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].finish_reason == "tool_calls"


async def test_json_schema_output_uses_the_native_mechanism(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    fmt = ResponseFormat(type="json_schema", name="verdict", schema=schema, strict=True)
    if isinstance(adapter, AnthropicAdapter):
        fake_provider.script(
            Reply(tool_calls=(FakeToolCall("structured_answer", {"label": "ok"}),))
        )
    else:
        fake_provider.script(Reply(text='{"label": "ok"}'))
    response = await adapter.complete(question(response_format=fmt), ENTRY)
    assert json.loads(response.message.content or "") == {"label": "ok"}
    assert response.finish_reason == "stop"
    sent = fake_provider.calls[-1].body
    if isinstance(adapter, AnthropicAdapter):  # forced tool use
        assert sent["tool_choice"] == {"type": "tool", "name": "structured_answer"}
        assert sent["tools"][0]["input_schema"] == schema
    else:  # strict json_schema
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["strict"] is True


async def test_sampling_parameters_are_sent(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    params = SamplingParams(temperature=0.2, max_tokens=55, stop=("END",))
    await adapter.complete(question(params=params), ENTRY)
    sent = fake_provider.calls[-1].body
    assert sent["temperature"] == 0.2
    assert sent["max_tokens"] == 55  # a compatible server: max_tokens, not max_completion_tokens
    assert sent.get("stop", sent.get("stop_sequences")) == ["END"]


async def test_cached_input_tokens_are_reported(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="x", input_tokens=100, output_tokens=1, cached_input_tokens=40))
    usage = (await adapter.complete(question(), ENTRY)).usage
    assert usage.cached_input_tokens == 40
    # OpenAI counts cached tokens inside prompt_tokens; Anthropic reports them beside
    # input_tokens. Normalized, input_tokens always includes them.
    assert usage.input_tokens == (100 if isinstance(adapter, OpenAIAdapter) else 140)


FAULTS: list[tuple[Fault, type[LLMError]]] = [
    (Fault("rate_limit", retry_after=3), UpstreamRateLimited),
    (Fault("server_error"), UpstreamUnavailable),
    (Fault("overloaded"), UpstreamUnavailable),
    (Fault("bad_request"), UpstreamRejected),
    (Fault("hang", hang_s=3), UpstreamTimeout),
    (Fault("malformed"), UpstreamBadResponse),
]


@pytest.mark.parametrize(("fault", "expected"), FAULTS, ids=[f.kind for f, _ in FAULTS])
async def test_provider_failures_map_to_one_error_vocabulary(
    adapter: OpenAIAdapter | AnthropicAdapter,
    fake_provider: FakeProviderServer,
    fault: Fault,
    expected: type[LLMError],
) -> None:
    fake_provider.script(fault)
    with pytest.raises(expected) as caught:
        await adapter.complete(question(), ENTRY)
    assert caught.value.model == "public-name"
    if isinstance(caught.value, UpstreamRateLimited):
        assert caught.value.retry_after == 3
    # Provider bodies never reach our message.
    assert "rate_limit_exceeded" not in caught.value.message


@pytest.mark.parametrize("kind", ["cut_stream", "server_error"])
async def test_a_broken_stream_raises_instead_of_ending_quietly(
    adapter: OpenAIAdapter | AnthropicAdapter, fake_provider: FakeProviderServer, kind: str
) -> None:
    fake_provider.script(Fault(kind, after_chunks=2))
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamUnavailable):
        async for event in adapter.stream(question("tell me a long story please"), ENTRY):
            seen.append(event)
    assert not any(isinstance(e, StreamEnd) for e in seen)


async def test_a_slow_complete_answer_gets_the_total_time_not_the_per_byte_limit(
    fake_provider: FakeProviderServer,
) -> None:
    """No byte of a non-streaming answer arrives before it is done: the read limit must
    stretch to the answer's total time, or a 300 s model would time out at 60 s."""
    adapter = OpenAIAdapter(
        name="p",
        api_key="k",
        base_url=fake_provider.openai_base_url,
        timeouts=Timeouts(connect_s=1, read_s=0.2, total_s=3),
        max_connections=2,
    )
    fake_provider.script(Reply(text="worth the wait", delay_s=0.6))
    try:
        response = await adapter.complete(question(), ENTRY)
    finally:
        await adapter.aclose()
    assert response.message.content == "worth the wait"


@pytest.mark.parametrize(
    ("base_url", "key"),
    [
        (None, "max_completion_tokens"),
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("http://127.0.0.1:11434/v1", "max_tokens"),
        ("https://api.openai.com.example.net/v1", "max_tokens"),
    ],
)
async def test_openais_own_api_is_sent_max_completion_tokens_also_when_named_by_url(
    base_url: str | None, key: str
) -> None:
    """OpenAI's reasoning models refuse ``max_tokens``; compatible servers know only it."""
    adapter = OpenAIAdapter(
        name="p",
        api_key="k",
        base_url=base_url,
        timeouts=Timeouts(connect_s=1, read_s=1, total_s=1),
        max_connections=1,
    )
    request = question()
    request = replace(request, params=replace(request.params, max_tokens=50))
    try:
        arguments = adapter._arguments(request, ENTRY, stream=False)
    finally:
        await adapter.aclose()
    assert arguments[key] == 50
    (other,) = {"max_tokens", "max_completion_tokens"} - {key}
    assert other not in arguments
