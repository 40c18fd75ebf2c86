"""Identity, budgets and request guards at their edges: a budget lowered while leases are
held (in this process and another), several rate limits at once, IPv4-mapped and forwarded
clients, the sign-in throttle's address and storage outage, out-of-range values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.core.notify import PgListener
from mainsail.identity import cache as identity_cache
from mainsail.llm.gateway import CallContext
from mainsail.quotas.service import DbQuota, QuotaExceeded
from mainsail.ratelimits.policy import RateLimits
from mainsail.settings import QuotaSettings, RateLimitSettings, Settings
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.app import make_settings, truncate_all, wait_until
from tests.fixtures.identity import Account, create_user
from tests.quotas.test_quotas import counter

ASK = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


@asynccontextmanager
async def running(settings: Settings, database_url: URL) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            yield application
    finally:
        await truncate_all(database_url)


@asynccontextmanager
async def client_for(app: FastAPI, ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# --- budgets ---------------------------------------------------------------------------------


async def test_a_lowered_budget_is_not_overspent_from_a_lease_held_before(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    fake_provider: FakeProviderServer,
) -> None:
    """An admin lowers a user's budget (to stop a runaway caller, say). The process's lease,
    reserved under the old limit, must not keep serving calls past the new one."""
    assert (
        await client.put(
            f"/admin/users/{alice.id}/quota",
            json={"monthly_tokens": 1_000_000},
            headers=admin.headers,
        )
    ).status_code == 200
    fake_provider.script(*[Reply(text="x", input_tokens=5, output_tokens=40)] * 10)
    first = await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
    assert first.status_code == 200  # 45 tokens used; the lease holds 16 calls' worth
    lowered = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 100}, headers=admin.headers
    )
    assert lowered.status_code == 200
    # 45 used of 100: a second call's worst case (~75 tokens) no longer fits.
    statuses = [
        (await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)).status_code
        for _ in range(5)
    ]
    await app.state.quota.drain()
    final = await counter(app, alice.id)
    assert final["tokens_used"] <= 100, (statuses, final["tokens_used"])
    assert statuses == [429] * 5


# --- rate limits -----------------------------------------------------------------------------


async def test_a_request_refused_by_one_limit_is_not_counted_against_another(
    database_url: URL,
) -> None:
    """With "3/minute;1/second", requests refused by the per-second limit do not use up the
    per-minute one (they did: after one served request and two refused ones, the caller was
    locked out for a minute)."""
    settings = make_settings(
        database_url,
        rate_limit={"anonymous": "3/minute;1/second", "key_prefix": "s24c-order"},
    )
    async with (
        running(settings, database_url) as application,
        client_for(application, "10.9.8.7") as client,
    ):
        first = await client.get("/v1/models")
        assert first.status_code == 401  # counted and answered (no credential)
        burst = [(await client.get("/v1/models")).status_code for _ in range(2)]
        assert burst == [429, 429]  # the per-second limit
        await asyncio.sleep(1.2)
        later = await client.get("/v1/models")
    assert later.status_code != 429, later.headers.get("ratelimit-limit")


def test_ipv4_mapped_clients_are_not_counted_as_one() -> None:
    """A dual-stack listener (``--host ::``) reports IPv4 peers as ``::ffff:a.b.c.d``; their
    /64 is ``::``: each is counted by its IPv4 address, not all in one anonymous counter."""
    limits = RateLimits(RateLimitSettings())
    one = limits.client_address("::ffff:198.51.100.7", [])
    other = limits.client_address("::ffff:203.0.113.9", [])
    assert one != other
    assert one == "198.51.100.7"


async def test_login_throttle_counts_the_forwarded_client_not_the_proxy(
    database_url: URL,
) -> None:
    """Behind a trusted proxy (forwarded_for_hops=1) the rate limiter counts the client from
    X-Forwarded-For, and so does the sign-in throttle (it counted the proxy: one client's
    failed guesses locked every other client out of signing in)."""
    settings = make_settings(
        database_url,
        auth={"login_max_attempts_per_ip": 3},
        rate_limit={"forwarded_for_hops": 1, "key_prefix": "s24c-xff"},
    )
    async with running(settings, database_url) as application:
        await create_user(application, email="victim@example.com")
        async with client_for(application, "10.0.0.1") as proxy:  # the proxy is the peer
            for n in range(3):
                guess = {"email": f"spray{n}@example.com", "password": "guess-guess-guess"}
                response = await proxy.post(
                    "/auth/login", json=guess, headers={"X-Forwarded-For": "203.0.113.66"}
                )
                assert response.status_code == 401
            victim = await proxy.post(
                "/auth/login",
                json={"email": "victim@example.com", "password": "correct horse battery staple"},
                headers={"X-Forwarded-For": "198.51.100.20"},
            )
    assert victim.status_code == 200, victim.text


async def test_login_throttle_counts_ipv6_clients_by_their_64(database_url: URL) -> None:
    """The per-address sign-in limit counts an IPv6 client by its /64, as the rate limiter
    does (exact addresses let a client spray passwords past it by changing its low bits)."""
    settings = make_settings(database_url, auth={"login_max_attempts_per_ip": 3})
    statuses = []
    async with running(settings, database_url) as application:
        for n in range(6):
            async with client_for(application, f"2001:db8:1:2::{n + 1:x}") as client:
                guess = {"email": f"spray{n}@example.com", "password": "guess-guess-guess"}
                statuses.append((await client.post("/auth/login", json=guess)).status_code)
    assert statuses[3:] == [429, 429, 429], statuses


# --- direct quota checks ---------------------------------------------------------------------


def _lease_settings(**overrides: object) -> QuotaSettings:
    values: dict[str, object] = {"user_monthly_tokens": 1000, "user_monthly_cost_usd": None}
    return QuotaSettings(**{**values, **overrides})  # type: ignore[arg-type]


async def test_a_lease_released_while_a_call_waits_on_its_lock_leaks_that_calls_hold(
    app: FastAPI, alice: Account
) -> None:
    """The flusher releases an idle lease when its lock is free, ignoring calls queued on that
    lock (``lease.waiting``) no more: a call that was waiting grew the lease it still held,
    no longer in ``_leases``, and its hold stayed reserved for good, its use never written.

    Schedule: call A refills the lease under its lock and is refused; call B waits on the
    lock; the periodic flush runs in the loop iteration between A releasing the lock and B
    taking it (here started from A's refusal, as the flusher's timer would fire)."""
    quota = DbQuota(app.state.db, _lease_settings(lease_calls=1, user_monthly_tokens=100))
    ctx = CallContext(user_id=alice.id, role="user")
    held = await quota.reserve(ctx, tokens=60, cost=Decimal(0))
    await quota.settle(held, tokens=60, cost=Decimal(0))  # 60 used, none spare
    flushes: list[asyncio.Task[None]] = []
    refused = quota._exceeded

    async def exceeded(*args: Any, **kwargs: Any) -> QuotaExceeded:
        error = await refused(*args, **kwargs)
        flushes.append(asyncio.create_task(quota.flush(release_idle_after_s=0.0)))
        return error

    quota._exceeded = exceeded  # type: ignore[method-assign]
    call_a = asyncio.create_task(quota.reserve(ctx, tokens=50, cost=Decimal(0)))
    await asyncio.sleep(0)  # A holds the lock, refilling
    call_b = asyncio.create_task(quota.reserve(ctx, tokens=30, cost=Decimal(0)))
    results = await asyncio.gather(call_a, call_b, return_exceptions=True)
    assert isinstance(results[0], QuotaExceeded)
    b_held = results[1]
    assert not isinstance(b_held, BaseException)  # 60 + 30 fits in 100
    await asyncio.gather(*flushes)
    await quota.settle(b_held, tokens=30, cost=Decimal(0))
    await quota.drain()
    final = await counter(app, alice.id)
    assert (final["tokens_reserved"], final["tokens_used"]) == (0, 90)


# --- odd input -------------------------------------------------------------------------------


async def test_a_budget_beyond_bigint_is_refused_with_422_not_500(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, admin: Account
) -> None:
    """quota_limits.monthly_tokens is a BIGINT: a larger value is a 422, not a database
    error (as monthly_cost_usd, bounded by its digits)."""
    response = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 10**19}, headers=admin.headers
    )
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json"


async def test_sign_in_with_an_unreachable_rate_limit_redis_is_not_a_500(
    database_url: URL,
) -> None:
    """The request limiter fails open when its Redis is down (an outage of the counters must
    not become an outage of the API); so does the sign-in throttle on the same storage (it
    raised: nobody could sign in, every attempt an unexplained 500)."""
    from tests.fixtures.servers import free_port

    settings = make_settings(
        database_url,
        rate_limit={"storage_url": f"redis://127.0.0.1:{free_port()}/0", "key_prefix": "s24c"},
    )
    async with running(settings, database_url) as application:
        await create_user(application, email="ada@example.com")
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/auth/login",
                json={"email": "ada@example.com", "password": "correct horse battery staple"},
            )
    # Either fail open as the limiter does (200), or say the service is unavailable (503).
    assert response.status_code in (200, 503), (response.status_code, response.text[:200])


async def test_an_api_key_expiry_at_the_end_of_time_is_not_a_500(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """9999-12-31T23:59:59-14:00 is a valid aware datetime, but in UTC it falls in year
    10000, which neither Python nor PostgreSQL can hold: a 422."""
    response = await client.post(
        "/me/api-keys",
        json={"name": "forever", "expires_at": "9999-12-31T23:59:59-14:00"},
        headers=alice.headers,
    )
    assert response.status_code in (201, 422), (response.status_code, response.text[:300])


async def test_another_process_gives_back_its_lease_when_the_budget_is_lowered(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, admin: Account
) -> None:
    """A second process (its own budget leases and LISTEN connection) holds a slice of
    alice's budget reserved under the old limit; the admin's lowering reaches it through the
    identity channel, and its next call refills under the new limit: refused."""
    other = DbQuota(app.state.db, _lease_settings(user_monthly_tokens=1_000_000))
    listener = PgListener(app.state.db)
    listener.subscribe(
        identity_cache.CHANNEL, other.user_changed, on_gap=lambda: None, on_connected=lambda: None
    )
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        ctx = CallContext(user_id=alice.id, role="user")
        held = await other.reserve(ctx, tokens=100, cost=Decimal(0))
        await other.settle(held, tokens=100, cost=Decimal(0))  # a lease of ~16 calls' worth
        lowered = await client.put(
            f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 150}, headers=admin.headers
        )
        assert lowered.status_code == 200, lowered.text

        async def given_back() -> bool:
            leases = [lease for key, lease in other._leases.items() if key[0] == alice.id]
            return all(lease.granted_tokens == lease.inflight_tokens for lease in leases)

        await wait_until(given_back, within_s=10)
        with pytest.raises(QuotaExceeded):  # 100 used of 150: another 100 does not fit
            await other.reserve(ctx, tokens=100, cost=Decimal(0))
    finally:
        await listener.stop()
        await other.drain()
