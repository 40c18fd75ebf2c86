"""The two providers that need no network: extractive (the offline default) and scripted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import GenerationUnavailable, UpstreamRateLimited
from mainsail.llm.providers.extractive import NO_CONTEXT, NOT_FOUND, ExtractiveAdapter
from mainsail.llm.providers.scripted import ScriptedAdapter
from mainsail.llm.types import (
    ChatRequest,
    Message,
    Passage,
    ResponseFormat,
    StreamEnd,
    TextDelta,
)

ENTRY = ModelEntry(name="extractive", provider="extractive", model="extractive")
PASSAGES = (
    Passage(id="a", text="The Eiffel Tower is in Paris. It was finished in 1889."),
    Passage(id="b", text="Mount Fuji is the highest mountain in Japan. It is a volcano."),
)


def ask(text: str, **kwargs: object) -> ChatRequest:
    return ChatRequest(model="extractive", messages=(Message(role="user", content=text),), **kwargs)  # type: ignore[arg-type]


async def test_extractive_quotes_the_best_sentences_with_their_sources() -> None:
    response = await ExtractiveAdapter().complete(
        ask("When was the Eiffel Tower finished?", context=PASSAGES), ENTRY
    )
    text = response.message.content or ""
    assert "finished in 1889. [1]" in text
    assert "Fuji" not in text
    assert response.model == "extractive"
    assert response.usage.estimated


async def test_extractive_cites_each_passage_it_quotes() -> None:
    response = await ExtractiveAdapter().complete(
        ask("Which volcano is the highest mountain, and where is the tower?", context=PASSAGES),
        ENTRY,
    )
    text = response.message.content or ""
    assert "[1]" in text
    assert "[2]" in text


async def test_extractive_says_so_when_nothing_matches_or_nothing_was_given() -> None:
    adapter = ExtractiveAdapter()
    none_match = await adapter.complete(ask("quantum chromodynamics", context=PASSAGES), ENTRY)
    assert none_match.message.content == NOT_FOUND
    no_context = await adapter.complete(ask("anything?"), ENTRY)
    assert no_context.message.content == NO_CONTEXT


async def test_extractive_reads_passages_from_earlier_messages() -> None:
    request = ChatRequest(
        model="extractive",
        messages=(
            Message(role="system", content="Oslo is the capital of Norway.\n\nBergen is rainy."),
            Message(role="user", content="What is the capital of Norway?"),
        ),
    )
    response = await ExtractiveAdapter().complete(request, ENTRY)
    assert response.message.content == "Oslo is the capital of Norway. [1]"


async def test_extractive_refuses_structured_output() -> None:
    with pytest.raises(GenerationUnavailable, match="OPENAI_API_KEY"):
        await ExtractiveAdapter().complete(
            ask("x", response_format=ResponseFormat(type="json_object")), ENTRY
        )


async def test_extractive_streams_the_same_answer() -> None:
    request = ask("When was the Eiffel Tower finished?", context=PASSAGES)
    events = [e async for e in ExtractiveAdapter().stream(request, ENTRY)]
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    complete = (await ExtractiveAdapter().complete(request, ENTRY)).message.content
    assert streamed == complete
    assert isinstance(events[-1], StreamEnd)


async def test_scripted_rules_match_in_order_and_count_down(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"match": "capital", "reply": "Paris."},
                {"match": "weather", "tool_call": {"name": "get_weather", "arguments": {"c": 1}}},
                {"match": "flaky", "error": "rate_limited", "times": 1},
            ]
        )
    )
    adapter = ScriptedAdapter.from_file(script)
    entry = ModelEntry(name="scripted", provider="scripted", model="scripted")
    assert (await adapter.complete(ask("The capital?"), entry)).message.content == "Paris."
    call = (await adapter.complete(ask("weather now"), entry)).message.tool_calls[0]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"c": 1})
    with pytest.raises(UpstreamRateLimited):
        await adapter.complete(ask("flaky"), entry)
    after = await adapter.complete(ask("flaky"), entry)  # the rule is used up
    assert after.message.content == "scripted: flaky"
    adapter.enqueue({"reply": "one-shot"})
    assert (await adapter.complete(ask("capital"), entry)).message.content == "one-shot"
    assert len(adapter.calls) == 5


def test_scripted_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown script keys"):
        ScriptedAdapter(rules=[{"repyl": "typo"}])
