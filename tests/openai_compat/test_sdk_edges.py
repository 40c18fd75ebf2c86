"""The OpenAI-compatible surface as the official SDK and LangChain use it: tool calls
metered without provider usage, models.retrieve, max_completion_tokens errors, strict tools,
parallel_tool_calls, disabled fallback models, too many stop sequences. Each test asserts
what OpenAI's API (and its official SDK) does."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from mainsail.llm.catalogue import load_catalogue
from tests.fakes.provider_server import FakeProviderServer, Reply, ToolCall
from tests.openai_compat.conftest import LiveMainsail
from tests.openai_compat.test_sdk import WEATHER_TOOL, client, usage_rows


async def test_non_streamed_tool_call_without_provider_usage_is_metered(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    """A provider that reports no usage (many OpenAI-compatible servers) is estimated by the
    gateway; for a JSON answer that is a tool call, the estimate counts the call (it counted
    only ``message.content``: 0 output tokens, as the streamed path never did)."""
    args = {"city": "Oslo", "unit": "celsius", "days": 3, "detail": "hourly forecast please"}
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", args),), report_usage=False))
    completion = await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert completion.choices[0].message.tool_calls
    assert completion.usage is not None
    # The model wrote the tool call's arguments: those are output tokens, paid for upstream.
    assert completion.usage.completion_tokens > 0
    (row,) = await usage_rows(live, expect=1)
    assert row["tokens_out"] > 0
    assert row["cost_usd"] > row["tokens_in"] / 10**6  # more than the input alone


async def test_models_retrieve(live: LiveMainsail) -> None:
    """``client.models.retrieve(id)`` is ``GET /v1/models/{id}``."""
    model = await client(live).models.retrieve("fake-gpt")
    assert model.id == "fake-gpt"
    assert model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        await client(live).models.retrieve("gpt-9000")
    assert caught.value.code == "model_not_found"


async def test_max_completion_tokens_error_names_the_parameter_sent(live: LiveMainsail) -> None:
    """A caller who sent ``max_completion_tokens`` is told about ``max_completion_tokens``
    (not ``max_tokens``, which the caller never sent)."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=100_000,
        )
    assert caught.value.param == "max_completion_tokens"


async def test_strict_function_tools_reach_the_provider_strict(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    """``function.strict: true`` (what ``openai.pydantic_function_tool`` and
    ``chat.completions.parse(tools=...)`` send) reaches the upstream model, which is then held
    to the schema (else the SDK's client-side parse of the arguments can fail)."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Oslo"}),)))
    await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[tool],  # type: ignore[list-item]
    )
    sent = fake_provider.calls[-1].body["tools"][0]["function"]
    assert sent.get("strict") is True


async def test_parallel_tool_calls_false_reaches_the_provider(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    """``parallel_tool_calls: false`` (LangChain's ``bind_tools(parallel_tool_calls=False)``)
    changes the answer: it is sent upstream, not dropped as an unknown field."""
    fake_provider.script(Reply(tool_calls=(ToolCall("get_weather", {"city": "Oslo"}),)))
    await client(live).chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "weather in Oslo and Rome?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        parallel_tool_calls=False,
    )
    assert fake_provider.calls[-1].body.get("parallel_tool_calls") is False


def test_disabling_a_shipped_fallback_model_keeps_the_catalogue_loadable(tmp_path: Path) -> None:
    """``enabled: false`` is how a user catalogue removes a shipped model; removing one that a
    shipped model names as its fallback (gpt-4o-mini for gpt-4o, claude-haiku-4-5 for
    claude-sonnet-4-5) leaves the chains that named it, instead of the whole catalogue failing
    to load ("unknown fallback") and the service not starting."""
    path = tmp_path / "c.toml"
    path.write_text('[models."gpt-4o-mini"]\nenabled = false\n')
    catalogue = load_catalogue(path)
    assert "gpt-4o-mini" not in catalogue.models
    assert [entry.name for entry in catalogue.chain("gpt-4o")] == ["gpt-4o"]


async def test_too_many_stop_sequences_names_stop_and_the_real_problem(live: LiveMainsail) -> None:
    """Five stop sequences (OpenAI takes up to 4) are refused naming ``stop`` and the reason,
    not the first error of the ``str | list[str]`` union (``param: "stop.str"``, "Input
    should be a valid string")."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client(live).chat.completions.create(
            model="fake-gpt",
            messages=[{"role": "user", "content": "hi"}],
            stop=["a", "b", "c", "d", "e"],
        )
    assert caught.value.param == "stop"
    assert "at most 4" in caught.value.message
