"""The principal cache: credentials resolved from memory on the hot path, and every way a
credential can end still applies at once, whichever process (or plain SQL) ends it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.core.principal import Principal, Role, Scope
from mainsail.identity.cache import PrincipalCache
from tests.fixtures.app import wait_until
from tests.fixtures.database import asyncpg_dsn
from tests.fixtures.identity import Account, create_api_key


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def holds(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    async def check() -> bool:
        return condition()

    await wait_until(check, within_s=within_s)


async def online(app: FastAPI) -> PrincipalCache:
    cache: PrincipalCache = app.state.identity.principals
    await holds(lambda: cache.active)
    return cache


async def sql(url: URL, statement: str, *args: object) -> None:
    """Another process's change: a connection of its own, not the app's."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def refused_within(client: httpx.AsyncClient, headers: dict[str, str], s: float) -> float:
    """Seconds until /me answers 401 (fails the test after ``s``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < s:
        if (await client.get("/me", headers=headers)).status_code == 401:
            return loop.time() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"still accepted after {s} s")


async def test_repeated_calls_are_served_from_memory(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    cache = await online(app)
    key = (await create_api_key(client, alice))["key"]
    hits = cache.hits
    for _ in range(3):
        assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    assert cache.hits - hits == 2  # the first call read the database, the others did not
    for _ in range(2):
        assert (await client.get("/me", headers=alice.headers)).status_code == 200
    assert cache.hits - hits >= 3  # the session, too


async def test_key_revoked_through_the_api_is_refused_on_the_next_call(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    await online(app)
    created = await create_api_key(client, alice)
    assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 200
    deleted = await client.delete(f"/me/api-keys/{created['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    assert (await client.get("/me", headers=bearer(created["key"]))).status_code == 401


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE api_keys SET revoked_at = now() WHERE owner_id = $1",
        "UPDATE api_keys SET scopes = '{}' WHERE owner_id = $1",
        "UPDATE api_keys SET expires_at = now() WHERE owner_id = $1",
        "UPDATE users SET disabled = true WHERE id = $1",
        "DELETE FROM api_keys WHERE owner_id = $1",
    ],
    ids=["revoked", "rescoped", "expired", "user-disabled", "deleted"],
)
async def test_key_changed_by_another_process_stops_working_within_moments(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    database_url: URL,
    change: str,
) -> None:
    cache = await online(app)
    key = (await create_api_key(client, alice))["key"]
    for _ in range(2):  # cached now
        assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    assert len(cache) >= 1
    await sql(database_url, change, alice.id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < 2:
        status = (await client.get("/v1/models", headers=bearer(key))).status_code
        if status in (401, 403):
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError("the changed key still worked after 2 s")


async def test_session_ended_by_another_process_stops_working_within_moments(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, database_url: URL
) -> None:
    await online(app)
    assert (await client.get("/me", headers=alice.headers)).status_code == 200
    await sql(
        database_url, "UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1", alice.id
    )
    assert await refused_within(client, alice.headers, 2.0) < 2.0


async def test_demotion_by_another_process_takes_effect(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, database_url: URL
) -> None:
    await online(app)
    assert (await client.get("/admin/users", headers=admin.headers)).status_code == 200
    await sql(database_url, "UPDATE users SET role = 'user' WHERE id = $1", admin.id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (await client.get("/admin/users", headers=admin.headers)).status_code == 200:
        assert loop.time() - started < 2, "still an admin after 2 s"
        await asyncio.sleep(0.005)
    assert (await client.get("/admin/users", headers=admin.headers)).status_code == 403


async def test_a_lost_listener_connection_empties_the_cache(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, database_url: URL
) -> None:
    """A lost LISTEN connection means lost notifications: the cache empties when it drops and
    again once the listener is back (it reconnects by itself)."""
    cache = await online(app)
    listener = app.state.listener
    key = (await create_api_key(client, alice))["key"]
    assert (await client.get("/me", headers=bearer(key))).status_code == 200
    assert len(cache) >= 1
    connections = listener.connections
    await sql(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'mainsail-listener'",
    )
    await holds(lambda: listener.connections > connections and cache.online)
    assert len(cache) == 0


def test_offline_cache_serves_nothing_and_clears_on_reconnect() -> None:
    """What the listener does on a gap: off and empty, then on and empty again."""
    cache, _ = online_cache()
    cache.put("k", principal(), generation=cache.generation)
    cache.set_online(False)  # the connection dropped
    assert cache.get("k") is None
    cache.put("k", principal(), generation=cache.generation)
    assert len(cache) == 0
    cache.set_online(True)  # back: starts empty
    assert cache.get("k") is None
    assert cache.active


# --- the cache on its own ------------------------------------------------------------------


def principal(user: uuid.UUID | None = None) -> Principal:
    return Principal(
        user_id=user or uuid.uuid4(),
        email="a@example.com",
        role=Role.USER,
        scopes=frozenset({Scope.CHAT}),
        via="api_key",
        api_key_id=uuid.uuid4(),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def online_cache(**kwargs: object) -> tuple[PrincipalCache, Clock]:
    clock = Clock()
    cache = PrincipalCache(ttl_s=30, clock=clock, **kwargs)  # type: ignore[arg-type]
    cache.set_online(True)
    return cache, clock


def test_a_lookup_that_raced_an_invalidation_is_not_stored() -> None:
    cache, _ = online_cache()
    who = principal()
    generation = cache.generation  # the lookup starts ...
    cache.invalidate_user(who.user_id)  # ... a revocation lands meanwhile ...
    cache.put("k", who, generation=generation)  # ... and its (maybe stale) answer comes back
    assert cache.get("k") is None


def test_entries_expire_with_the_ttl_or_the_credential_whichever_is_first() -> None:
    cache, clock = online_cache()
    cache.put("long", principal(), generation=cache.generation)
    cache.put("short", principal(), generation=cache.generation, expires_in_s=5)
    cache.put("gone", principal(), generation=cache.generation, expires_in_s=-1)
    assert cache.get("gone") is None
    clock.now += 5
    assert cache.get("short") is None
    assert cache.get("long") is not None
    clock.now += 25
    assert cache.get("long") is None


def test_invalidating_a_user_drops_only_that_users_entries() -> None:
    cache, _ = online_cache()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for key, user in (("a1", alice), ("a2", alice), ("b1", bob)):
        cache.put(key, principal(user), generation=cache.generation)
    cache.invalidate_user(str(alice))
    assert cache.get("a1") is None
    assert cache.get("a2") is None
    assert cache.get("b1") is not None
    cache.invalidate_user("*")  # a truncation: everything
    assert len(cache) == 0


def test_size_is_bounded_and_offline_or_zero_ttl_caches_nothing() -> None:
    cache, _ = online_cache(max_entries=3)
    for n in range(5):
        cache.put(f"k{n}", principal(), generation=cache.generation)
    assert len(cache) == 3
    assert cache.get("k0") is None
    assert cache.get("k4") is not None
    cache.set_online(False)
    assert cache.get("k4") is None
    cache.put("k9", principal(), generation=cache.generation)
    assert len(cache) == 0
    off = PrincipalCache(ttl_s=0)
    off.set_online(True)
    off.put("k", principal(), generation=off.generation)
    assert off.get("k") is None
