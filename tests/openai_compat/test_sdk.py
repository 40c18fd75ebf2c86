"""The official openai package, as a client of Mainsail's /v1 API: drop-in compatibility."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fakes.provider_server import FakeProviderServer, Fault, Reply, ToolCall
from tests.fixtures.app import wait_until
from tests.openai_compat.conftest import LiveMainsail

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def client(live: LiveMainsail, *, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=live.v1, api_key=key or live.api_key, max_retries=0)


async def usage_rows(live: LiveMainsail, *, expect: int) -> list[dict[str, object]]:
    """The usage events the writer flushed (it writes every 50 ms in tests)."""
    url = live.settings.async_database_url()
    engine = create_async_engine(url)  # type: ignore[arg-type]
    try:
        for _ in range(100):
            async with engine.connect() as connection:
                rows = (
                    (
                        await connection.execute(
                            text("SELECT * FROM usage_events ORDER BY created_at")
                        )
                    )
                    .mappings()
                    .all()
                )
            if len(rows) >= expect:
                return [dict(row) for row in rows]
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    raise AssertionError(f"expected {expect} usage events, found {len(rows)}")


async def test_non_streaming_completion(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Hello from upstream", input_tokens=20, output_tokens=4))
    completion = await client(live).chat.completions.create(
        model="fake-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello from upstream"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake-gpt"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (20, 4)
    # The provider key stays on the server: the upstream never saw the caller's key.
    assert live.api_key not in json.dumps(fake_provider.calls[-1].headers)
    (row,) = await usage_rows(live, expect=1)
    assert row["user_id"] == live.user_id
    assert (row["tokens_in"], row["tokens_out"], row["status"]) == (20, 4, "ok")
    assert row["cost_usd"] == Decimal(20 * 1 + 4 * 2) / Decimal(10**6)


async def test_streaming_completion_with_usage(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="one two three", input_tokens=9, output_tokens=3))
    stream = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text_out == "one two three"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    (row,) = await usage_rows(live, expect=1)
    assert row["ttft_ms"] is not None


async def test_tool_calls_through_the_sdk(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Oslo"}),)))
    completion = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_streamed_tool_calls_through_the_sdk(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Rome"}),)))
    stream = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,  # type: ignore[list-item]
    )
    arguments = ""
    names = []
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += call.function.arguments or "" if call.function else ""
            if call.function and call.function.name:
                names.append(call.function.name)
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Rome"}


async def test_models_list(live: LiveMainsail) -> None:
    models = await client(live).models.list()
    ids = {model.id for model in models.data}
    assert {"fake-gpt", "fake-claude", "extractive"} <= ids


async def test_unknown_model_is_a_404_listing_the_models(live: LiveMainsail) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client(live).chat.completions.create(
            model="gpt-9000", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert "fake-gpt" in caught.value.message


async def test_bad_credentials_are_a_401_in_openai_shape(live: LiveMainsail) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await client(live, key="msk_000000000000_" + "x" * 43).models.list()
    assert caught.value.status_code == 401


async def test_too_long_is_a_400_before_any_upstream_call(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert caught.value.code == "context_length_exceeded"
    assert fake_provider.count() == 0


async def test_invalid_parameters_are_a_400_naming_the_parameter(live: LiveMainsail) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert caught.value.param == "temperature"


async def test_upstream_failure_after_retries_is_a_5xx_without_upstream_details(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(*[Fault("server_error")] * 3)
    with pytest.raises(openai.InternalServerError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unavailable"
    assert fake_provider.count() == 3
    rows = await usage_rows(live, expect=1)
    assert rows[-1]["status"] == "error"


async def test_a_stream_cut_mid_way_ends_with_an_explicit_error(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("cut_stream", after_chunks=2))
    stream = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "tell me a long story"}],
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk)
    assert any(c.choices and c.choices[0].delta.content for c in received)
    assert "stream" in caught.value.message.lower()


async def test_a_client_that_leaves_mid_stream_stops_the_upstream_and_is_metered(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    # Three deltas two seconds apart: the client reads the first and goes away.
    fake_provider.script(Reply(text="alpha beta gamma delta epsilon zeta", chunk_delay_s=2.0))
    stream = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "tell me a long story"}],
        stream=True,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()

    # The gateway hangs up on the provider at once, not when the next delta would come.
    async def upstream_closed() -> bool:
        return fake_provider.abandoned_streams == 1

    await wait_until(upstream_closed, within_s=1.5)
    (row,) = await usage_rows(live, expect=1)
    # The tokens that went out are billed (estimated: the provider never reported usage).
    assert row["status"] == "cancelled"
    assert row["tokens_out"] > 0
    assert row["cost_usd"] > 0


async def test_quota_exhaustion_is_a_429_insufficient_quota(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    url = live.settings.async_database_url()
    engine = create_async_engine(url)  # type: ignore[arg-type]
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO quota_limits (user_id, monthly_tokens, updated_at)"
                " VALUES (:u, 10, now())"
            ),
            {"u": live.user_id},
        )
    await engine.dispose()
    with pytest.raises(openai.RateLimitError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=50
        )
    assert caught.value.code == "quota_exceeded"
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert fake_provider.count() == 0


async def test_provider_keys_and_upstream_bodies_never_reach_clients_or_logs(
    live: LiveMainsail, fake_provider: FakeProviderServer, logs: object
) -> None:
    provider_key = live.settings.llm.anthropic_api_key.get_secret_value()  # type: ignore[union-attr]
    fake_provider.script(*[Fault("server_error")] * 3, Fault("bad_request"), Fault("rate_limit"))
    failures = []
    for model in ("fake-claude", "fake-claude", "fake-gpt"):
        try:
            await client(live).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIError as exc:
            failures.append(json.dumps(exc.body))
    assert len(failures) == 3
    for text_out in [*failures, logs.text]:  # type: ignore[attr-defined]
        assert provider_key not in text_out
        assert "rate_limit_exceeded" not in text_out  # the fake's own error code
