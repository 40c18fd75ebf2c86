"""Idempotency-Key: one execution per key and request, replayed answers, honest refusals."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.fixtures.app import wait_until
from tests.fixtures.identity import Account, create_api_key

CHAT = "/v1/chat/completions"
ASK = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def keyed(account: Account, key: str, **extra: str) -> dict[str, str]:
    return {**account.headers, "Idempotency-Key": key, **extra}


def upstream(fake: FakeProviderServer) -> int:
    return fake.count("/chat/completions")


async def usage_events(app: FastAPI) -> int:
    await app.state.usage.flush()
    async with app.state.db.engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM usage_events")))


async def key_rows(app: FastAPI) -> list[dict[str, Any]]:
    async with app.state.db.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT user_id, key, state, status_code FROM idempotency_keys ORDER BY key")
        )
        return [dict(row) for row in rows.mappings()]


async def execute(app: FastAPI, sql: str, **params: Any) -> None:
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text(sql), params)


# --- replay -----------------------------------------------------------------------------


async def test_a_repeat_is_replayed_without_a_second_call_or_usage_event(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="the one answer"), Reply(text="a second answer"))
    first = await client.post(CHAT, json=ASK, headers=keyed(alice, "k-1"))
    second = await client.post(CHAT, json=ASK, headers=keyed(alice, "k-1"))
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"][0]["message"]["content"] == "the one answer"
    assert second.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]  # a new delivery
    assert upstream(fake_provider) == 1
    assert await usage_events(app) == 1
    rows = await key_rows(app)
    assert [(r["user_id"], r["key"], r["state"], r["status_code"]) for r in rows] == [
        (alice.id, "k-1", "done", 200)
    ]


@pytest.mark.mainsail_settings(analysis={"model": "fake-gpt"})
async def test_analyze_is_covered_by_default(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    sentiment = {"label": "positive", "score": 0.9, "rationale": "Kind words."}
    fake_provider.script(Reply(text=json.dumps(sentiment)), Reply(text=json.dumps(sentiment)))
    ask = {"task": "sentiment", "input": "Lovely stay.", "options": {}}
    first = await client.post("/analyze", json=ask, headers=keyed(alice, "an-1"))
    second = await client.post("/analyze", json=ask, headers=keyed(alice, "an-1"))
    assert first.status_code == second.status_code == 200, first.text
    assert second.content == first.content  # the original request id included
    assert second.headers["idempotent-replayed"] == "true"
    assert upstream(fake_provider) == 1
    assert await usage_events(app) == 1


async def test_chat_is_covered_by_default(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    """A retried ``POST /chat`` gets the first answer and its conversation, not a second."""
    ask = {"question": "Where do we anchor?"}
    first = await client.post("/chat", json=ask, headers=keyed(alice, "chat-1"))
    second = await client.post("/chat", json=ask, headers=keyed(alice, "chat-1"))
    assert first.status_code == second.status_code == 200, first.text
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    listed = (await client.get("/conversations", headers=alice.headers)).json()
    assert listed["total"] == 1
    third = await client.post("/chat", json=ask, headers=keyed(alice, "chat-2"))
    assert third.json()["conversation_id"] != first.json()["conversation_id"]


async def test_the_fingerprint_ignores_json_spacing_and_key_order(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="once"))
    compact = json.dumps(ASK, separators=(",", ":"))
    reordered = json.dumps(dict(reversed(list(ASK.items()))), indent=2)
    headers = keyed(alice, "k-json", **{"Content-Type": "application/json"})
    first = await client.post(CHAT, content=compact, headers=headers)
    second = await client.post(CHAT, content=reordered, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers.get("idempotent-replayed") == "true"
    assert upstream(fake_provider) == 1


async def test_a_wrong_content_type_is_not_replayed_to_the_corrected_retry(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    """A 415 is about the Content-Type header, which the fingerprint does not hold: the retry
    with the same key and body, sent as JSON, runs instead of getting the 415 again."""
    fake_provider.script(Reply(text="once"))
    body = json.dumps(ASK)
    wrong = await client.post(
        CHAT, content=body, headers=keyed(alice, "k-type", **{"Content-Type": "text/plain"})
    )
    assert wrong.status_code == 415, wrong.text
    right = await client.post(
        CHAT, content=body, headers=keyed(alice, "k-type", **{"Content-Type": "application/json"})
    )
    assert right.status_code == 200, right.text
    assert right.headers.get("idempotent-replayed") is None
    assert upstream(fake_provider) == 1


async def test_a_quoted_structured_field_key_is_the_same_key(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    await client.post(CHAT, json=ASK, headers=keyed(alice, "abc"))
    second = await client.post(CHAT, json=ASK, headers=keyed(alice, '"abc"'))
    assert second.headers.get("idempotent-replayed") == "true"
    assert upstream(fake_provider) == 1


async def test_a_different_request_with_the_same_key_is_422_in_openai_shape(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    first = await client.post(CHAT, json=ASK, headers=keyed(alice, "k-2"))
    changed = {**ASK, "messages": [{"role": "user", "content": "something else"}]}
    second = await client.post(CHAT, json=changed, headers=keyed(alice, "k-2"))
    assert first.status_code == 200
    assert second.status_code == 422
    error = second.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert error["type"] == "invalid_request_error"
    assert "Idempotency-Key" in error["message"]
    assert upstream(fake_provider) == 1


async def test_keys_are_per_user(
    client: httpx.AsyncClient, alice: Account, bob: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="for alice"), Reply(text="for bob"))
    for_alice = await client.post(CHAT, json=ASK, headers=keyed(alice, "shared"))
    bobs_ask = {**ASK, "messages": [{"role": "user", "content": "bob asks"}]}
    for_bob = await client.post(CHAT, json=bobs_ask, headers=keyed(bob, "shared"))
    assert for_bob.status_code == 200  # not 422: bob's key space is his own
    assert "idempotent-replayed" not in for_bob.headers
    assert for_bob.json()["choices"][0]["message"]["content"] == "for bob"
    again = await client.post(CHAT, json=ASK, headers=keyed(alice, "shared"))
    assert again.content == for_alice.content
    assert again.json()["choices"][0]["message"]["content"] == "for alice"
    assert again.headers["idempotent-replayed"] == "true"
    assert upstream(fake_provider) == 2


async def test_an_api_key_and_a_session_of_one_user_share_keys(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    api_key = (await create_api_key(client, alice))["key"]
    await client.post(CHAT, json=ASK, headers=keyed(alice, "k-user"))
    second = await client.post(
        CHAT, json=ASK, headers={"X-API-Key": api_key, "Idempotency-Key": "k-user"}
    )
    assert second.headers.get("idempotent-replayed") == "true"
    assert upstream(fake_provider) == 1


async def test_a_narrower_credential_of_the_same_user_gets_no_replay(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    chat_key = (await create_api_key(client, alice, scopes=["chat"]))["key"]
    read_key = (await create_api_key(client, alice, scopes=["documents:read"]))["key"]
    fake_provider.script(Reply(text="by the chat key"), Reply(text="by the session"))
    by_key = await client.post(
        CHAT, json=ASK, headers={"X-API-Key": chat_key, "Idempotency-Key": "from-key"}
    )
    # The session holds every scope the key had: it gets the answer.
    replayed = await client.post(CHAT, json=ASK, headers=keyed(alice, "from-key"))
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.content == by_key.content
    # A key without the chat scope neither reads the answer nor runs the request.
    await client.post(CHAT, json=ASK, headers=keyed(alice, "from-session"))
    refused = await client.post(
        CHAT, json=ASK, headers={"X-API-Key": read_key, "Idempotency-Key": "from-session"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert "by the session" not in refused.text
    assert upstream(fake_provider) == 2


# --- concurrency ------------------------------------------------------------------------


async def test_fifty_concurrent_duplicates_make_one_upstream_call(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="only once", delay_s=0.5))
    responses = await asyncio.gather(
        *(client.post(CHAT, json=ASK, headers=keyed(alice, "burst")) for _ in range(50))
    )
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.content for r in responses} == {responses[0].content}
    assert responses[0].json()["choices"][0]["message"]["content"] == "only once"
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 49
    assert upstream(fake_provider) == 1
    assert await usage_events(app) == 1


@pytest.mark.mainsail_settings(idempotency={"wait_s": 0.2})
async def test_a_duplicate_gets_409_while_the_first_runs_past_the_wait(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="slow", delay_s=1.0))
    first = asyncio.create_task(client.post(CHAT, json=ASK, headers=keyed(alice, "slow")))
    await wait_until(lambda: _async(upstream(fake_provider) == 1))
    started = asyncio.get_running_loop().time()
    duplicate = await client.post(CHAT, json=ASK, headers=keyed(alice, "slow"))
    waited = asyncio.get_running_loop().time() - started
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "request_in_progress"
    assert int(duplicate.headers["retry-after"]) >= 1
    assert 0.15 <= waited < 0.9  # it waited for the bound, not for the answer
    assert (await first).status_code == 200
    later = await client.post(CHAT, json=ASK, headers=keyed(alice, "slow"))
    assert later.status_code == 200
    assert later.headers["idempotent-replayed"] == "true"
    assert upstream(fake_provider) == 1


@pytest.mark.mainsail_settings(idempotency={"lease_s": 1, "wait_s": 5})
async def test_a_running_request_renews_its_claim(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    """A request that runs longer than the lease keeps its key: the duplicate waits."""
    fake_provider.script(Reply(text="long", delay_s=1.8), Reply(text="twice"))
    first = asyncio.create_task(client.post(CHAT, json=ASK, headers=keyed(alice, "long")))
    await wait_until(lambda: _async(upstream(fake_provider) == 1))
    await asyncio.sleep(1.3)  # past the first lease
    duplicate = await client.post(CHAT, json=ASK, headers=keyed(alice, "long"))
    assert duplicate.headers.get("idempotent-replayed") == "true"
    assert duplicate.content == (await first).content
    assert upstream(fake_provider) == 1


async def test_a_claim_left_by_a_crashed_process_lapses(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    await execute(
        app,
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, method, path, state, scopes,"
        " owner, locked_until, created_at, expires_at) VALUES (:u, 'orphan', 'x', 'POST', :p,"
        " 'running', '{}', :o, now() - interval '1 second', now(), now() + interval '1 day')",
        u=alice.id,
        p=CHAT,
        o=uuid.uuid4(),
    )
    response = await client.post(CHAT, json=ASK, headers=keyed(alice, "orphan"))
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    assert upstream(fake_provider) == 1
    assert [r["state"] for r in await key_rows(app)] == ["done"]


# --- what is stored ---------------------------------------------------------------------


@pytest.mark.mainsail_settings(llm={"max_attempts": 1})
async def test_a_5xx_is_not_stored_and_the_key_can_be_retried(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("server_error"), Reply(text="second time lucky"))
    failed = await client.post(CHAT, json=ASK, headers=keyed(alice, "retry-me"))
    assert failed.status_code == 502
    assert await key_rows(app) == []  # released
    retried = await client.post(CHAT, json=ASK, headers=keyed(alice, "retry-me"))
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert retried.json()["choices"][0]["message"]["content"] == "second time lucky"
    assert upstream(fake_provider) == 2


@pytest.mark.mainsail_settings(idempotency={"paths": ["/jobs/*"]})
async def test_a_crash_releases_the_key_on_any_configured_path(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    """The mechanism is not tied to /v1: a route that raises (500) leaves the key free, and
    its successful retry (201, problem+json elsewhere) is what gets replayed."""
    runs: list[dict[str, Any]] = []

    async def job(body: dict[str, Any]) -> dict[str, Any]:
        runs.append(body)
        if len(runs) == 1:
            raise RuntimeError("boom")
        return {"run": len(runs)}

    app.add_api_route("/jobs/run", job, methods=["POST"], status_code=201)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
        crashed = await raw.post("/jobs/run", json={"n": 1}, headers=keyed(alice, "job"))
    assert crashed.status_code == 500
    assert await key_rows(app) == []
    retried = await client.post("/jobs/run", json={"n": 1}, headers=keyed(alice, "job"))
    replayed = await client.post("/jobs/run", json={"n": 1}, headers=keyed(alice, "job"))
    assert (retried.status_code, retried.json()) == (201, {"run": 2})
    assert (replayed.status_code, replayed.json()) == (201, {"run": 2})
    assert replayed.headers["idempotent-replayed"] == "true"
    reused = await client.post("/jobs/run", json={"n": 2}, headers=keyed(alice, "job"))
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "idempotency_key_reused"
    assert len(runs) == 2


@pytest.mark.mainsail_settings(llm={"max_attempts": 1})
async def test_a_429_is_not_stored(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("rate_limit"), Reply(text="later"))
    assert (await client.post(CHAT, json=ASK, headers=keyed(alice, "rl"))).status_code == 429
    retried = await client.post(CHAT, json=ASK, headers=keyed(alice, "rl"))
    assert retried.status_code == 200
    assert upstream(fake_provider) == 2


async def test_a_deterministic_4xx_is_stored_and_replayed(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    unknown = {**ASK, "model": "no-such-model"}
    first = await client.post(CHAT, json=unknown, headers=keyed(alice, "bad"))
    second = await client.post(CHAT, json=unknown, headers=keyed(alice, "bad"))
    assert first.status_code == second.status_code == 404
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert upstream(fake_provider) == 0


async def test_streams_pass_through_and_are_not_stored(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="one"), Reply(text="two"))
    streamed = {**ASK, "stream": True}
    for _ in range(2):
        response = await client.post(CHAT, json=streamed, headers=keyed(alice, "stream"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "idempotent-replayed" not in response.headers
        assert response.text.endswith("data: [DONE]\n\n")
    assert upstream(fake_provider) == 2
    assert await key_rows(app) == []


# --- expiry -----------------------------------------------------------------------------


async def test_an_expired_key_runs_afresh_and_is_purged(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="old"), Reply(text="kept"), Reply(text="new"))
    await client.post(CHAT, json=ASK, headers=keyed(alice, "old"))
    await client.post(CHAT, json=ASK, headers=keyed(alice, "kept"))
    await execute(
        app, "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key='old'"
    )
    fresh = await client.post(CHAT, json=ASK, headers=keyed(alice, "old"))
    assert "idempotent-replayed" not in fresh.headers
    assert fresh.json()["choices"][0]["message"]["content"] == "new"
    await execute(app, "UPDATE idempotency_keys SET expires_at = now() WHERE key = 'old'")
    assert await app.state.idempotency.purge() == 1
    assert [r["key"] for r in await key_rows(app)] == ["kept"]


@pytest.mark.mainsail_settings(idempotency={"purge_interval_s": 0.05})
async def test_the_periodic_purge_deletes_expired_keys(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    await client.post(CHAT, json=ASK, headers=keyed(alice, "a"))
    await client.post(CHAT, json=ASK, headers=keyed(alice, "b"))
    await execute(app, "UPDATE idempotency_keys SET expires_at = now() WHERE key = 'a'")

    async def only_b_left() -> bool:
        return [r["key"] for r in await key_rows(app)] == ["b"]

    await wait_until(only_b_left, within_s=5)


# --- validation and pass-through -------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", '""', "k" * 256, "tab\there"])
async def test_an_invalid_key_is_400_naming_the_header(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer, key: str
) -> None:
    response = await client.post(CHAT, json=ASK, headers=keyed(alice, key))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_idempotency_key"
    assert "Idempotency-Key" in error["message"]
    assert upstream(fake_provider) == 0


async def test_a_key_of_255_characters_is_accepted(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post(CHAT, json=ASK, headers=keyed(alice, "k" * 255))
    assert response.status_code == 200


@pytest.mark.mainsail_settings(idempotency={"paths": [CHAT, "/elsewhere/*"]})
async def test_outside_v1_refusals_are_problem_json(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post("/elsewhere/thing", json={}, headers=keyed(alice, ""))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert (problem["code"], problem["header"]) == ("invalid_idempotency_key", "Idempotency-Key")
    assert problem["request_id"] == response.headers["x-request-id"]


@pytest.mark.mainsail_settings(idempotency={"required": True})
async def test_the_header_can_be_required(
    client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    missing = await client.post(CHAT, json=ASK, headers=alice.headers)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "idempotency_key_required"
    anonymous = await client.post(CHAT, json=ASK)
    assert anonymous.status_code == 401  # who you are comes first
    assert (await client.get("/v1/models", headers=alice.headers)).status_code == 200
    assert upstream(fake_provider) == 0


async def test_unauthenticated_requests_pass_through_to_401(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProviderServer
) -> None:
    for headers in (
        {"Idempotency-Key": "anon"},
        {"Idempotency-Key": "anon", "X-API-Key": "msk_000000000000_" + "x" * 43},
        {"Idempotency-Key": "anon", "Authorization": "Basic Zm9vOmJhcg=="},
    ):
        response = await client.post(CHAT, json=ASK, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert await key_rows(app) == []
    assert upstream(fake_provider) == 0


async def test_requests_without_the_header_are_untouched(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    first = await client.post(CHAT, json=ASK, headers=alice.headers)
    second = await client.post(CHAT, json=ASK, headers=alice.headers)
    assert first.status_code == second.status_code == 200
    assert "idempotent-replayed" not in second.headers
    assert upstream(fake_provider) == 2
    assert await key_rows(app) == []


async def _async(value: bool) -> bool:
    return value
