"""POST /analyze: typed answers through each provider's native structured output, checked,
and repaired with the model's help when they do not hold."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fakes.provider_server import FakeProviderServer, Reply, ToolCall
from tests.fixtures.identity import Account, create_api_key

REVIEW = "The hotel was lovely and the staff were kind, but breakfast was cold."
SENTIMENT = {"label": "mixed", "score": 0.3, "rationale": "Praises the hotel, faults breakfast."}


def answer(value: Any, **kwargs: Any) -> Reply:
    return Reply(text=value if isinstance(value, str) else json.dumps(value), **kwargs)


async def analyze(
    client: httpx.AsyncClient, account: Account, task: str, input: str = REVIEW, **options: Any
) -> httpx.Response:
    return await client.post(
        "/analyze",
        json={"task": task, "input": input, "options": options},
        headers=account.headers,
    )


async def test_sentiment_answer_is_typed_versioned_and_metered(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(answer(SENTIMENT))
    response = await analyze(client, alice, "sentiment")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == SENTIMENT
    assert body["task"] == "sentiment"
    assert body["prompt_version"] == "sentiment@1"
    assert body["model"] == "fake-gpt"
    assert body["usage"]["attempts"] == 1
    assert body["request_id"] == response.headers["x-request-id"]
    # Native structured output: OpenAI's strict json_schema with our answer's schema.
    sent = fake_provider.calls[0].body
    fmt = sent["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert REVIEW in sent["messages"][-1]["content"]
    assert sent["temperature"] == 0
    await app.state.usage.flush()
    async with app.state.db.engine.connect() as connection:
        row = (
            await connection.execute(text("SELECT kind, prompt_version, model FROM usage_events"))
        ).one()
    assert tuple(row) == ("analyze", "sentiment@1", "fake-gpt")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"label": "mixed", "score": 0.3, "rationale": "cut', "not valid JSON"),
        ({"label": "mixed", "score": "high", "rationale": "x"}, "score"),
        ({"label": "mixed", "rationale": "x"}, "score"),
        ({**SENTIMENT, "confidence": 0.9}, "confidence"),
        ({**SENTIMENT, "label": "happy"}, "label"),
        ({**SENTIMENT, "score": 7}, "score"),
    ],
    ids=["truncated", "wrong-type", "missing-field", "extra-field", "bad-enum", "out-of-range"],
)
async def test_invalid_answers_are_repaired_with_the_problems_fed_back(
    client: httpx.AsyncClient,
    alice: Account,
    fake_provider: FakeProviderServer,
    bad: Any,
    problem: str,
) -> None:
    fake_provider.script(answer(bad), answer(SENTIMENT))
    response = await analyze(client, alice, "sentiment")
    assert response.status_code == 200, response.text
    assert response.json()["result"] == SENTIMENT
    assert response.json()["usage"]["attempts"] == 2
    assert fake_provider.count() == 2
    repair = fake_provider.calls[1].body["messages"]
    assert repair[-2]["role"] == "assistant"  # its own answer, then what was wrong with it
    assert repair[-1]["role"] == "user"
    assert problem in repair[-1]["content"]


async def test_gives_up_after_the_repair_limit_without_leaking_the_prompt(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(*[answer("no json here")] * 5)
    response = await analyze(client, alice, "sentiment", input="secret-input-text " * 3)
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "invalid_model_output"
    assert body["attempts"] == 3  # one call and two repairs (the default)
    assert any("not valid JSON" in error for error in body["errors"])
    assert "secret-input-text" not in response.text
    assert fake_provider.count() == 3


async def test_a_cut_off_answer_is_retried_with_a_note_about_length(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(answer('{"label": "mix', finish_reason="length"), answer(SENTIMENT))
    response = await analyze(client, alice, "sentiment")
    assert response.status_code == 200
    assert "cut off" in fake_provider.calls[1].body["messages"][-1]["content"]


async def test_anthropic_answers_through_a_forced_tool(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(tool_calls=(ToolCall("structured_answer", SENTIMENT),)))
    response = await analyze(client, alice, "sentiment", model="fake-claude")
    assert response.status_code == 200, response.text
    assert response.json()["result"] == SENTIMENT
    assert response.json()["model"] == "fake-claude"
    sent = fake_provider.calls[0].body
    assert sent["tool_choice"] == {"type": "tool", "name": "structured_answer"}


# --- the other tasks -------------------------------------------------------------------------


async def test_summary_respects_its_options(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    long = {"summary": "word " * 40, "key_points": ["a"]}
    good = {"summary": "A kind hotel with a cold breakfast.", "key_points": ["kind", "cold"]}
    fake_provider.script(answer(long), answer(good))
    response = await analyze(client, alice, "summary", max_words=10, max_points=2)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == good
    assert "at most 10 words" in fake_provider.calls[0].body["messages"][0]["content"]
    assert "40 words" in fake_provider.calls[1].body["messages"][-1]["content"]


async def test_classify_keeps_to_the_callers_labels(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    labels = ["billing", "complaint", "praise"]
    scores = [
        {"label": label, "confidence": c} for label, c in zip(labels, [0.1, 0.7, 0.6], strict=True)
    ]
    fake_provider.script(
        answer({"labels": ["food"], "scores": scores}),  # not a caller label
        answer({"labels": ["complaint", "praise"], "scores": scores}),  # two, single-label
        answer({"labels": ["complaint"], "scores": scores}),
    )
    response = await analyze(client, alice, "classify", labels=labels)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["labels"] == ["complaint"]
    assert response.json()["usage"]["attempts"] == 3
    multi = scores
    fake_provider.script(answer({"labels": ["complaint", "praise"], "scores": multi}))
    both = await analyze(client, alice, "classify", labels=labels, multi_label=True)
    assert both.json()["result"]["labels"] == ["complaint", "praise"]


async def test_extract_spans_point_into_the_input(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    doc = "Ada Lovelace met Charles Babbage in London. Later, Ada wrote the notes."
    miscounted = {"text": "London", "type": "location", "start": 30, "end": 36}
    fake_provider.script(
        answer({"entities": [{"text": "Paris", "type": "location", "start": 0, "end": 5}]}),
        answer({"entities": [{"text": "Ada", "type": "person", "start": 60, "end": 900}]}),
        answer(
            {
                "entities": [
                    {"text": "Ada Lovelace", "type": "person", "start": 0, "end": 12},
                    miscounted,
                    {"text": "Ada", "type": "person", "start": 50, "end": 53},
                ]
            }
        ),
    )
    response = await analyze(client, alice, "extract", input=doc)
    assert response.status_code == 200, response.text
    entities = response.json()["result"]["entities"]
    for entity in entities:  # every span is exact, the miscounted ones corrected
        assert doc[entity["start"] : entity["end"]] == entity["text"]
    assert [e["start"] for e in entities] == [0, doc.index("London"), doc.rindex("Ada")]
    repairs = [call.body["messages"][-1]["content"] for call in fake_provider.calls[1:]]
    assert "does not occur" in repairs[0]
    assert "outside the text" in repairs[1]


async def test_custom_schema_answers_validate_against_it(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "hotel_rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "issues": {"type": "array", "items": {"$ref": "#/$defs/issue"}},
        },
        "required": ["hotel_rating", "issues"],
        "$defs": {"issue": {"type": "string", "enum": ["food", "staff", "room"]}},
    }
    fake_provider.script(
        answer({"hotel_rating": 9, "issues": ["food"]}),
        answer({"hotel_rating": 4, "issues": ["food"]}),
    )
    response = await analyze(client, alice, "custom", schema=schema, instructions="Rate it.")
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"hotel_rating": 4, "issues": ["food"]}
    assert response.json()["prompt_version"] == "custom@1"
    sent = fake_provider.calls[0].body["response_format"]["json_schema"]
    assert sent["schema"] == schema
    assert sent["strict"] is False
    assert "hotel_rating" in fake_provider.calls[1].body["messages"][-1]["content"]


# --- bad input -------------------------------------------------------------------------------

NODE = {"type": "object", "properties": {"k": {"$ref": "#/$defs/node"}}}
RECURSIVE = {
    "type": "object",
    "properties": {"n": {"$ref": "#/$defs/node"}},
    "$defs": {"node": NODE},
}
DEEP: dict[str, Any] = {"type": "object"}
for _ in range(30):
    DEEP = {"type": "object", "properties": {"x": DEEP}}


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "object", "properties": {"a": {"type": "nonsense"}}}, "not valid JSON Schema"),
        ({"type": "object", "properties": {"a": {"$ref": "https://evil.example/s"}}}, "local"),
        (RECURSIVE, "recurses"),
        (DEEP, "deeper than"),
        ({"type": "object", "description": "x" * 40_000}, "bytes"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "points at nothing"),
        ({"type": "array"}, "object"),
    ],
    ids=["invalid", "remote-ref", "recursive", "too-deep", "huge", "dangling-ref", "not-object"],
)
async def test_bad_custom_schemas_are_refused_before_any_model_call(
    client: httpx.AsyncClient,
    alice: Account,
    fake_provider: FakeProviderServer,
    schema: dict[str, Any],
    words: str,
) -> None:
    response = await analyze(client, alice, "custom", schema=schema)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert words in response.json()["detail"]
    assert fake_provider.count() == 0


async def test_unknown_task_oversized_input_and_bad_options(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    unknown = await analyze(client, alice, "translate")
    assert unknown.status_code == 422
    assert unknown.json()["tasks"] == ["sentiment", "summary", "classify", "extract", "custom"]
    limit = app.state.settings.analysis.max_input_chars
    too_big = await analyze(client, alice, "sentiment", input="x" * (limit + 1))
    assert too_big.status_code == 413
    no_labels = await analyze(client, alice, "classify")
    assert no_labels.status_code == 422
    assert no_labels.json()["errors"][0]["field"] == "body.options.labels"
    unknown_option = await analyze(client, alice, "sentiment", colour="red")
    assert unknown_option.status_code == 422
    duplicate = await analyze(client, alice, "classify", labels=["a", "a"])
    assert duplicate.status_code == 422
    assert fake_provider.count() == 0


async def test_needs_credentials_and_the_analyze_scope(
    client: httpx.AsyncClient, alice: Account
) -> None:
    body = {"task": "sentiment", "input": REVIEW}
    assert (await client.post("/analyze", json=body)).status_code == 401
    key = (await create_api_key(client, alice, scopes=["chat"]))["key"]
    refused = await client.post("/analyze", json=body, headers={"X-API-Key": key})
    assert refused.status_code == 403


async def test_unknown_model_is_a_404_problem(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    response = await analyze(client, alice, "sentiment", model="no-such-model")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "fake-gpt" in response.json()["available_models"]
