"""The response cache through the API: a repeated deterministic request is answered without
an upstream call, metered as free, and anything that changes the answer misses."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.fixtures.identity import Account

ASK: dict[str, Any] = {
    "model": "fake-gpt",
    "temperature": 0,
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}


async def chat(client: httpx.AsyncClient, account: Account, body: dict[str, Any], **headers: str):
    return await client.post(
        "/v1/chat/completions", json=body, headers={**account.headers, **headers}
    )


async def ledger(app: FastAPI) -> list[tuple[bool, Decimal, int, int, str]]:
    await app.state.usage.flush()
    async with app.state.db.engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT cache_hit, cost_usd, tokens_in, tokens_out, status FROM usage_events "
                "ORDER BY created_at"
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_second_identical_request_makes_no_upstream_call_and_costs_nothing(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Paris.", input_tokens=12, output_tokens=2))
    first = await chat(client, alice, ASK)
    second = await chat(client, alice, ASK)
    assert first.status_code == second.status_code == 200
    assert fake_provider.count() == 1
    assert "mainsail-cache" not in first.headers
    assert second.headers["mainsail-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["choices"][0]["message"]["content"] == "Paris."
    assert second.json()["usage"] == first.json()["usage"]
    events = await ledger(app)
    assert [(hit, status) for hit, _, _, _, status in events] == [(False, "ok"), (True, "ok")]
    assert events[0][1] > 0
    assert events[1][1] == 0
    assert events[1][2:4] == (12, 2)  # and says what it served
    # The budget is charged once.
    await app.state.quota.drain()
    budget = (await client.get("/me/usage", headers=alice.headers)).json()["budget"]
    assert budget["used_tokens"] == 14


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 50},
        {"seed": 7},
        {"stop": ["\n"]},
        {"top_p": 0.5},
        {"response_format": {"type": "json_object"}},
        {"model": "fake-claude"},
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"messages": [ASK["messages"][1]]},  # no system prompt
    ],
    ids=lambda change: next(iter(change)) + ("" if len(change) == 1 else "+"),
)
async def test_a_changed_parameter_misses(
    client: httpx.AsyncClient,
    alice: Account,
    fake_provider: FakeProviderServer,
    change: dict[str, Any],
) -> None:
    assert (await chat(client, alice, ASK)).status_code == 200
    changed = await chat(client, alice, {**ASK, **change})
    assert changed.status_code == 200, changed.text
    assert "mainsail-cache" not in changed.headers
    assert fake_provider.count() == 2
    # Both answers are kept under their own keys.
    assert (await chat(client, alice, {**ASK, **change})).headers["mainsail-cache"] == "hit"
    assert fake_provider.count() == 2


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in ASK.items() if k != "temperature"},  # provider default: sampled
        {**ASK, "temperature": 0.7},
        {
            **ASK,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "send_email", "parameters": {"type": "object"}},
                }
            ],
        },
    ],
    ids=["temperature-unset", "temperature-0.7", "tools"],
)
async def test_requests_that_are_not_deterministic_are_never_cached(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    fake_provider: FakeProviderServer,
    body: dict[str, Any],
) -> None:
    for _ in range(2):
        response = await chat(client, alice, body)
        assert response.status_code == 200
        assert "mainsail-cache" not in response.headers
    assert fake_provider.count() == 2
    assert [hit for hit, *_ in await ledger(app)] == [False, False]


async def test_cache_control_no_cache_fetches_afresh_and_keeps_the_new_answer(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="old"), Reply(text="new"))
    await chat(client, alice, ASK)
    fresh = await chat(client, alice, ASK, **{"Cache-Control": "no-cache"})
    assert fresh.json()["choices"][0]["message"]["content"] == "new"
    assert fake_provider.count() == 2
    again = await chat(client, alice, ASK)
    assert again.headers["mainsail-cache"] == "hit"
    assert again.json()["choices"][0]["message"]["content"] == "new"


async def test_cache_control_no_store_neither_reads_nor_keeps(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="one"), Reply(text="two"), Reply(text="three"))
    await chat(client, alice, ASK, **{"Cache-Control": "no-store"})
    await chat(client, alice, ASK, **{"Cache-Control": "no-store"})
    assert fake_provider.count() == 2
    third = await chat(client, alice, ASK)  # nothing was kept: a miss
    assert third.json()["choices"][0]["message"]["content"] == "three"
    assert fake_provider.count() == 3


async def test_answers_are_kept_per_caller(
    client: httpx.AsyncClient, alice: Account, bob: Account, fake_provider: FakeProviderServer
) -> None:
    await chat(client, alice, ASK)
    bobs = await chat(client, bob, ASK)
    assert "mainsail-cache" not in bobs.headers
    assert fake_provider.count() == 2


async def test_a_streamed_answer_serves_later_requests_streamed_or_not(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="Paris is the capital.", input_tokens=12, output_tokens=5))
    streamed = await chat(client, alice, {**ASK, "stream": True})
    assert streamed.status_code == 200
    plain = await chat(client, alice, ASK)
    assert plain.headers["mainsail-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == "Paris is the capital."
    replay = await chat(
        client, alice, {**ASK, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert replay.headers["mainsail-cache"] == "hit"
    chunks = [
        json.loads(line[6:]) for line in replay.text.splitlines() if line.startswith("data: {")
    ]
    text_out = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert text_out == "Paris is the capital."
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert replay.text.rstrip().endswith("data: [DONE]")
    assert fake_provider.count() == 1
    assert [hit for hit, *_ in await ledger(app)] == [False, True, True]


async def test_a_fallback_answer_is_not_kept(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(*[Fault("server_error")] * 3, Reply(text="from claude"))
    body = {**ASK, "model": "fake-gpt-with-fallback"}
    first = await chat(client, alice, body)
    assert first.json()["model"] == "fake-claude"
    second = await chat(client, alice, body)
    assert "mainsail-cache" not in second.headers
    assert fake_provider.count() == 5  # three failures, Claude's answer, and a real call again


async def test_analyze_repeats_are_served_from_the_cache_at_no_cost(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    verdict = {"label": "positive", "score": 0.9, "rationale": "Loves it."}
    fake_provider.script(
        Reply(text=json.dumps(verdict), input_tokens=80, output_tokens=20),
        Reply(text=json.dumps(verdict), input_tokens=80, output_tokens=20),
    )
    body = {"task": "sentiment", "input": "I love this hotel.", "options": {}}
    first = await client.post("/analyze", json=body, headers=alice.headers)
    second = await client.post("/analyze", json=body, headers=alice.headers)
    assert first.status_code == second.status_code == 200, second.text
    assert fake_provider.count() == 1
    assert second.headers["mainsail-cache"] == "hit"
    assert second.json()["result"] == first.json()["result"] == verdict
    assert Decimal(first.json()["usage"]["cost_usd"]) > 0
    assert Decimal(second.json()["usage"]["cost_usd"]) == 0
    fresh = await client.post(
        "/analyze", json=body, headers={**alice.headers, "Cache-Control": "no-cache"}
    )
    assert fresh.status_code == 200, fresh.text
    assert "mainsail-cache" not in fresh.headers
    assert fake_provider.count() == 2
