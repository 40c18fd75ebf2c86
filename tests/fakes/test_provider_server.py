"""The fake provider is only useful if the official SDKs accept it: every test goes through one."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.provider_server import FakeProviderServer, Fault, Reply, ToolCall

USER = [{"role": "user", "content": "hello there world"}]
WEATHER = ToolCall(name="get_weather", arguments={"city": "Oslo", "days": 3}, id="call_w1")


@pytest.fixture
async def oai(fake_provider: FakeProviderServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=fake_provider.openai_base_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude(fake_provider: FakeProviderServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake_provider.anthropic_base_url, api_key="sk-ant-test", max_retries=0
    ) as client:
        yield client


async def _oai_chat(client: openai.AsyncOpenAI, **kwargs: Any) -> Any:
    return await client.chat.completions.create(model="gpt-fake", messages=USER, **kwargs)


async def _claude_msg(client: anthropic.AsyncAnthropic, **kwargs: Any) -> Any:
    return await client.messages.create(model="claude-fake", max_tokens=64, messages=USER, **kwargs)


async def _drain(stream: AsyncIterator[Any], into: list[Any]) -> None:
    """Read a stream to its end, keeping what arrived even if it then fails."""
    async for item in stream:
        into.append(item)


# -- OpenAI ------------------------------------------------------------------------------------


async def test_openai_echo_with_usage(oai: openai.AsyncOpenAI) -> None:
    completion = await _oai_chat(oai)

    assert completion.model == "gpt-fake"
    choice = completion.choices[0]
    assert choice.message.content == "echo: hello there world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)
    assert completion.usage.total_tokens == 7


async def test_openai_scripted_usage_and_no_usage(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(
        Reply(text="hi", input_tokens=100, output_tokens=7, cached_input_tokens=40),
        Reply(text="quiet", report_usage=False),
    )

    reported = await _oai_chat(oai)
    silent = await _oai_chat(oai)

    assert reported.usage is not None
    assert (reported.usage.prompt_tokens, reported.usage.completion_tokens) == (100, 7)
    assert reported.usage.prompt_tokens_details is not None
    assert reported.usage.prompt_tokens_details.cached_tokens == 40
    assert silent.choices[0].message.content == "quiet"
    assert silent.usage is None


async def test_openai_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await _oai_chat(oai, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text == "echo: hello there world"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3
    assert finishes[-1] == "stop"
    assert finishes.count("stop") == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


async def test_openai_stream_without_include_usage_sends_no_usage(
    oai: openai.AsyncOpenAI,
) -> None:
    stream = await _oai_chat(oai, stream=True)
    chunks = [chunk async for chunk in stream]

    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_openai_tool_call(oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer) -> None:
    fake_provider.script(Reply(tool_calls=(WEATHER, ToolCall("noop", {}))))

    completion = await _oai_chat(oai)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls[:1]] == [("call_w1", "get_weather")]
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo", "days": 3}
    assert calls[1].id.startswith("call_")
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 20


async def test_openai_tool_call_stream(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Checking.", tool_calls=(WEATHER,)))

    stream = await _oai_chat(oai, stream=True)
    text, ids, names, arguments, finish = "", [], [], "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            assert call.index == 0
            ids += [call.id] if call.id else []
            names += [call.function.name] if call.function and call.function.name else []
            arguments += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish

    assert text == "Checking."
    assert (ids, names) == (["call_w1"], ["get_weather"])
    assert json.loads(arguments) == {"city": "Oslo", "days": 3}
    assert finish == "tool_calls"


async def test_openai_rate_limit_carries_retry_after(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("rate_limit", retry_after=2))

    with pytest.raises(openai.RateLimitError) as caught:
        await _oai_chat(oai)

    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault("server_error"), openai.InternalServerError, 500),
        (Fault("server_error", status=502), openai.InternalServerError, 502),
        (Fault("overloaded"), openai.InternalServerError, 503),
        (Fault("bad_request"), openai.BadRequestError, 400),
        (Fault("cut_stream"), openai.InternalServerError, 500),  # not streaming: a plain 500
    ],
)
async def test_openai_error_faults(
    oai: openai.AsyncOpenAI,
    fake_provider: FakeProviderServer,
    fault: Fault,
    error: type[openai.APIStatusError],
    status: int,
) -> None:
    fake_provider.script(fault)

    with pytest.raises(error) as caught:
        await _oai_chat(oai)

    assert caught.value.status_code == status


async def test_openai_hang_times_out_without_blocking_the_server(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("hang", hang_s=5))

    with pytest.raises(openai.APITimeoutError):
        await _oai_chat(oai, timeout=0.5)
    started = time.monotonic()
    completion = await _oai_chat(oai)

    assert completion.choices[0].message.content == "echo: hello there world"
    assert time.monotonic() - started < 1


async def test_malformed_body_raises_in_both_sdks(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("malformed"), Fault("malformed"))

    # Both SDKs currently let json.JSONDecodeError (a ValueError) through unwrapped.
    with pytest.raises((openai.APIError, ValueError)):
        await _oai_chat(oai)
    with pytest.raises((anthropic.APIError, ValueError)):
        await _claude_msg(claude)


async def test_openai_cut_stream_never_finishes(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("cut_stream", after_chunks=1))
    stream = await _oai_chat(oai, stream=True, stream_options={"include_usage": True})
    chunks: list[Any] = []

    with pytest.raises(openai.APIConnectionError):
        await _drain(stream, chunks)

    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    assert contents == ["", "echo: he"]
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)


# -- Anthropic ---------------------------------------------------------------------------------


async def test_anthropic_echo_with_usage(claude: anthropic.AsyncAnthropic) -> None:
    message = await _claude_msg(claude, system="Be brief.")

    assert message.model == "claude-fake"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "echo: hello there world"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)


async def test_anthropic_stream_events(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="one two three four", finish_reason="length"))

    stream = await _claude_msg(claude, stream=True)
    events = [event async for event in stream]

    types = [event.type for event in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "one two three four"
    assert types.count("content_block_delta") >= 3
    assert events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == 4
    assert events[0].message.usage.input_tokens == 3


async def test_anthropic_tool_use(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Let me look.", tool_calls=(ToolCall("lookup", {"q": 1}),)))

    message = await _claude_msg(claude)

    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text"
    assert text.text == "Let me look."
    assert tool.type == "tool_use"
    assert (tool.name, tool.input) == ("lookup", {"q": 1})
    assert tool.id.startswith("toolu_")


async def test_anthropic_tool_use_stream_via_helper(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(WEATHER,), cached_input_tokens=9))

    async with claude.messages.stream(model="claude-fake", max_tokens=64, messages=USER) as stream:
        message = await stream.get_final_message()

    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("tool_use", "call_w1", {"city": "Oslo", "days": 3})
    ]
    assert message.usage.cache_read_input_tokens == 9


async def test_anthropic_overloaded_is_529(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("overloaded"))

    with pytest.raises(anthropic.APIStatusError) as caught:
        await _claude_msg(claude)

    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_anthropic_rate_limit(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("rate_limit", retry_after=1.5))

    with pytest.raises(anthropic.RateLimitError) as caught:
        await _claude_msg(claude)

    assert caught.value.response.headers["retry-after"] == "1.5"
    assert caught.value.body["error"]["type"] == "rate_limit_error"


async def test_anthropic_cut_stream_never_stops(
    claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("cut_stream", after_chunks=2))
    stream = await _claude_msg(claude, stream=True)
    events: list[Any] = []

    # anthropic 2.x lets the transport error through unwrapped (httpx2.RemoteProtocolError).
    with pytest.raises(Exception, match="incomplete chunked read"):
        await _drain(stream, events)

    assert [event.type for event in events] == ["message_start", "content_block_start"] + [
        "content_block_delta"
    ] * 2


# -- recording, scripting, malformed requests --------------------------------------------------


async def test_calls_are_recorded_in_order(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    await _oai_chat(oai, temperature=0.2)
    await _claude_msg(claude)
    models = await oai.models.list()

    assert [m.id for m in models.data] == ["fake-model"]
    assert [c.path for c in fake_provider.calls] == [
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/models",
    ]
    first, second, _ = fake_provider.calls
    assert first.body["temperature"] == 0.2
    assert first.body["messages"] == USER
    assert first.headers["authorization"] == "Bearer sk-test"
    assert second.body["max_tokens"] == 64
    assert "anthropic-version" in second.headers
    assert fake_provider.count() == 3
    assert fake_provider.count("/chat/completions") == 1
    assert fake_provider.count("/messages") == 1


async def test_script_is_fifo_across_providers_then_echoes(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("server_error"), Reply(text="first"))
    fake_provider.script(Reply(text="second"))

    with pytest.raises(openai.InternalServerError):
        await _oai_chat(oai)
    first = await _claude_msg(claude)
    second = await _oai_chat(oai)
    third = await _claude_msg(claude)

    assert first.content[0].text == "first"
    assert second.choices[0].message.content == "second"
    assert third.content[0].text == "echo: hello there world"


async def test_reset_clears_script_and_calls(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    await _oai_chat(oai)
    fake_provider.script(Fault("bad_request"))

    fake_provider.reset()

    assert fake_provider.calls == []
    completion = await _oai_chat(oai)
    assert completion.choices[0].message.content == "echo: hello there world"
    assert fake_provider.count() == 1


async def test_invalid_requests_get_provider_shaped_400(fake_provider: FakeProviderServer) -> None:
    fake_provider.script(Reply(text="kept for the next valid request"))
    async with httpx.AsyncClient(base_url=fake_provider.url) as http:
        no_model = await http.post("/v1/chat/completions", json={"messages": []})
        no_messages = await http.post("/v1/messages", json={"model": "m", "max_tokens": 1})
        not_json = await http.post("/v1/messages", content=b"{nope")
        valid = await http.post("/v1/chat/completions", json={"model": "m", "messages": USER})

    assert no_model.status_code == 400
    assert no_model.json()["error"]["type"] == "invalid_request_error"
    assert "model" in no_model.json()["error"]["message"]
    assert no_messages.status_code == not_json.status_code == 400
    assert no_messages.json()["type"] == "error"
    assert no_messages.json()["error"]["type"] == "invalid_request_error"
    assert fake_provider.calls[2].body == {}
    assert valid.json()["choices"][0]["message"]["content"] == "kept for the next valid request"


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")
