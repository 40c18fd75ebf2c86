"""Budgets: reserved before the call, settled after, never overspent under concurrency."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from mainsail.llm.gateway import CallContext, Gateway
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import Message
from mainsail.quotas.service import DbQuota, QuotaExceeded
from mainsail.settings import QuotaSettings
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.identity import Account, create_api_key

ASK = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
# What the gateway holds for ASK: the prompt with its safety margin, plus max_tokens.
ESTIMATE = Gateway._hold(count_message_tokens((Message(role="user", content="hi"),))) + 50


async def counter(app: FastAPI, user_id: object) -> dict[str, object]:
    async with app.state.db.engine.connect() as connection:
        row = (
            (
                await connection.execute(
                    text("SELECT * FROM quota_counters WHERE user_id = :u"), {"u": user_id}
                )
            )
            .mappings()
            .one()
        )
    return dict(row)


async def test_concurrent_calls_cannot_overspend_a_token_budget(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    fake_provider: FakeProviderServer,
) -> None:
    limit = ESTIMATE * 5 + ESTIMATE // 2  # room for five worst cases at once
    set_budget = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": limit}, headers=admin.headers
    )
    assert set_budget.status_code == 200
    # Each answer uses 40 output tokens; slow, so the twenty calls overlap.
    fake_provider.script(*[Reply(text="x", input_tokens=5, output_tokens=40, delay_s=0.2)] * 20)
    key = (await create_api_key(client, alice))["key"]
    responses = await asyncio.gather(
        *(
            client.post("/v1/chat/completions", json=ASK, headers={"X-API-Key": key})
            for _ in range(20)
        )
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 5
    assert set(statuses) <= {200, 429}
    refused = [r.json() for r in responses if r.status_code == 429]
    assert all(body["error"]["code"] == "quota_exceeded" for body in refused)
    await app.state.quota.drain()
    final = await counter(app, alice.id)
    assert final["tokens_reserved"] == 0  # every hold was settled or released
    assert final["tokens_used"] == 45 * statuses.count(200)  # the real use, not the estimate
    assert final["tokens_used"] <= limit


async def test_failed_calls_release_their_hold(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    from tests.fakes.provider_server import Fault

    fake_provider.script(*[Fault("bad_request")])
    response = await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
    assert response.status_code == 400
    await app.state.quota.drain()
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 0)
    assert final["cost_reserved"] == Decimal(0)


async def test_cost_budget_refuses_with_reset_time_and_figures(
    client: httpx.AsyncClient, alice: Account, admin: Account, fake_provider: FakeProviderServer
) -> None:
    await client.put(
        f"/admin/users/{alice.id}/quota",
        json={"monthly_cost_usd": "0.00001"},
        headers=admin.headers,
    )
    response = await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert int(response.headers["retry-after"]) > 0
    assert fake_provider.count() == 0


async def test_role_default_applies_until_an_admin_overrides_it(
    client: httpx.AsyncClient, alice: Account, admin: Account
) -> None:
    shown = (await client.get(f"/admin/users/{alice.id}/quota", headers=admin.headers)).json()
    assert shown["monthly_cost_usd"] == "25.000000"  # the user role's default
    assert shown["override"] == {"monthly_tokens": None, "monthly_cost_usd": None}
    changed = await client.put(
        f"/admin/users/{alice.id}/quota",
        json={"monthly_tokens": 1000, "monthly_cost_usd": "2.5"},
        headers=admin.headers,
    )
    body = changed.json()
    assert (body["monthly_tokens"], body["monthly_cost_usd"]) == (1000, "2.500000")
    restored = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": None}, headers=admin.headers
    )
    assert restored.json()["monthly_tokens"] is None
    assert restored.json()["monthly_cost_usd"] == "25.000000"


async def test_quota_admin_routes_validate_and_know_their_users(
    client: httpx.AsyncClient, admin: Account, alice: Account
) -> None:
    missing = "00000000-0000-7000-8000-000000000000"
    assert (
        await client.get(f"/admin/users/{missing}/quota", headers=admin.headers)
    ).status_code == 404
    negative = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": -1}, headers=admin.headers
    )
    assert negative.status_code == 422
    assert negative.json()["errors"][0]["field"] == "body.monthly_tokens"
    as_user = await client.get(f"/admin/users/{alice.id}/quota", headers=alice.headers)
    assert as_user.status_code == 403


# --- budget leases ---------------------------------------------------------------------------


def lease_settings(**overrides: object) -> QuotaSettings:
    values: dict[str, object] = {"user_monthly_tokens": 1000, "user_monthly_cost_usd": None}
    return QuotaSettings(**{**values, **overrides})  # type: ignore[arg-type]


def caller(account: Account) -> CallContext:
    return CallContext(user_id=account.id, role="user")


async def test_a_lease_serves_many_calls_with_one_statement(app: FastAPI, alice: Account) -> None:
    quota = DbQuota(app.state.db, lease_settings(lease_calls=10))
    for _ in range(10):
        held = await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
        await quota.settle(held, tokens=7, cost=Decimal(0))
    assert quota.refills == 1
    mid = await counter(app, alice.id)
    assert (mid["tokens_reserved"], mid["tokens_used"]) == (100, 0)  # the lease, unwritten use
    await quota.flush(release_idle_after_s=None)  # write the use, keep the lease
    kept = await counter(app, alice.id)
    assert (kept["tokens_reserved"], kept["tokens_used"]) == (30, 70)
    await quota.drain()
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 70)


async def test_busy_leases_refill_in_growing_slices(app: FastAPI, alice: Account) -> None:
    settings = lease_settings(lease_calls=2, user_monthly_tokens=100_000)
    # One call after another, each refill within a second of the last: slices of 2, 4, 8, ...
    # and once they grow, the next is reserved in the background before the lease runs dry.
    quota = DbQuota(app.state.db, settings)
    waited = 0
    for n in range(200):
        if n == 100:
            waited = quota.waits
        held = await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
        await asyncio.sleep(0.002)  # the model call
        await quota.settle(held, tokens=10, cost=Decimal(0))
    assert quota.refills <= 10  # 100 with fixed slices of 2
    assert quota.waits == waited  # the later refills all came before they were needed
    await quota.drain()
    assert (await counter(app, alice.id))["tokens_reserved"] == 0
    # Concurrent calls: the refill makes room for those waiting on it too, instead of one
    # refill (a database round trip) after another while they queue.
    quota = DbQuota(app.state.db, settings)

    async def call() -> None:
        held = await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
        await asyncio.sleep(0.01)
        await quota.settle(held, tokens=10, cost=Decimal(0))

    await asyncio.gather(*(call() for _ in range(64)))
    assert quota.refills <= 4  # 32 with fixed slices of 2
    await quota.drain()
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 2640)


async def test_a_busy_lease_uses_its_budget_to_the_end_without_refusals_ahead(
    app: FastAPI, alice: Account
) -> None:
    quota = DbQuota(app.state.db, lease_settings(lease_calls=2))  # 1000 tokens: 100 calls
    for _ in range(100):
        held = await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
        await asyncio.sleep(0.002)
        await quota.settle(held, tokens=10, cost=Decimal(0))
    with pytest.raises(QuotaExceeded):
        await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
    # Near the end slices shrink back: no more statements than fixed slices of 2 would take
    # (50), rather than a refused slice ahead on every call.
    assert quota.refills <= 50
    await quota.drain()
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 1000)


async def test_processes_with_leases_never_hold_more_than_the_budget_together(
    app: FastAPI, alice: Account
) -> None:
    """Two processes (two DbQuota instances on one database) race for a 1000-token budget
    in 60-token calls: together they grant at most 16 calls, whoever holds the slices."""
    settings = lease_settings(lease_calls=4)
    workers = [DbQuota(app.state.db, settings), DbQuota(app.state.db, settings)]

    async def call(quota: DbQuota) -> bool:
        try:
            held = await quota.reserve(caller(alice), tokens=60, cost=Decimal(0))
        except QuotaExceeded:
            return False
        await asyncio.sleep(0.01)
        await quota.settle(held, tokens=60, cost=Decimal(0))
        return True

    granted = await asyncio.gather(*(call(workers[n % 2]) for n in range(40)))
    for quota in workers:
        await quota.drain()
    final = await counter(app, alice.id)
    assert final["tokens_reserved"] == 0
    assert final["tokens_used"] == 60 * sum(granted) <= 1000
    assert sum(granted) >= 8  # slices may strand a little budget, never most of it


async def test_a_lease_gives_way_to_the_exact_need_before_refusing(
    app: FastAPI, alice: Account
) -> None:
    quota = DbQuota(app.state.db, lease_settings(lease_calls=100))
    held = await quota.reserve(caller(alice), tokens=900, cost=Decimal(0))  # no room for 100x
    assert held.tokens == 900
    with pytest.raises(QuotaExceeded):
        await quota.reserve(caller(alice), tokens=200, cost=Decimal(0))
    await quota.settle(held, tokens=0, cost=Decimal(0))
    await quota.drain()
    assert (await counter(app, alice.id))["tokens_reserved"] == 0


async def test_idle_leases_are_given_back_and_busy_ones_kept(app: FastAPI, alice: Account) -> None:
    quota = DbQuota(app.state.db, lease_settings(lease_calls=5))
    held = await quota.reserve(caller(alice), tokens=10, cost=Decimal(0))
    await quota.flush(release_idle_after_s=0.0)
    assert (await counter(app, alice.id))["tokens_reserved"] == 50  # a call is in progress
    await quota.settle(held, tokens=4, cost=Decimal(0))
    await quota.flush(release_idle_after_s=0.0)
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 4)
