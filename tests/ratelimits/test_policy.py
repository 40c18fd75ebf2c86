"""The policy and the middleware without the app: addresses, settings, WebSockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from mainsail.core.ratelimit import PacedMemoryStorage, close_storage, open_storage
from mainsail.ratelimits.middleware import RateLimitMiddleware
from mainsail.ratelimits.policy import RateLimits
from mainsail.settings import RateLimitSettings, SettingsError, load_settings


def policy(**values: Any) -> RateLimits:
    return RateLimits(RateLimitSettings(key_prefix="unit", **values))


def test_the_peer_is_the_client_unless_proxies_are_trusted() -> None:
    limits = policy()
    assert limits.client_address("192.0.2.1", [b"6.6.6.6"]) == "192.0.2.1"
    assert limits.client_address(None, []) == "unknown"


@pytest.mark.parametrize(
    ("hops", "headers", "expected"),
    [
        (1, [b"6.6.6.6, 203.0.113.5"], "203.0.113.5"),
        (2, [b"6.6.6.6, 203.0.113.5, 10.0.0.2"], "203.0.113.5"),
        (2, [b"6.6.6.6", b"203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # repeated headers
        (2, [b"10.0.0.2"], "192.0.2.1"),  # fewer entries than proxies: not via them all
        (1, [], "192.0.2.1"),
    ],
)
def test_trusted_hops_pick_the_address_the_outermost_proxy_saw(
    hops: int, headers: list[bytes], expected: str
) -> None:
    assert policy(forwarded_for_hops=hops).client_address("192.0.2.1", headers) == expected


def test_ipv6_clients_are_counted_by_their_64() -> None:
    limits = policy()
    one = limits.client_address("2001:db8:1:2:aaaa::1", [])
    assert one == limits.client_address("2001:db8:1:2:ffff:1:2:3", [])
    assert one == "2001:db8:1:2::"
    assert one != limits.client_address("2001:db8:1:3::1", [])


def test_exempt_paths_are_exact_unless_they_end_in_a_star() -> None:
    limits = policy(exempt_paths=["/health", "/docs*"])
    assert limits.exempt("/health")
    assert not limits.exempt("/health/x")
    assert limits.exempt("/docs")
    assert limits.exempt("/docs/oauth2-redirect")
    assert not limits.exempt("/me")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAINSAIL_RATE_LIMIT__USER", "lots"),
        ("MAINSAIL_RATE_LIMIT__ANONYMOUS", "10/fortnight"),
        ("MAINSAIL_RATE_LIMIT__STRATEGY", "fixed-window"),
        ("MAINSAIL_RATE_LIMIT__EXEMPT_PATHS", '["health"]'),
        ("MAINSAIL_RATE_LIMIT__FORWARDED_FOR_HOPS", "-1"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings(_env_file=None)


def test_limits_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_RATE_LIMIT__USER", "60/minute; 1000/hour")
    monkeypatch.setenv("MAINSAIL_RATE_LIMIT__ADMIN", "")
    limits = RateLimits(load_settings(_env_file=None).rate_limit)
    assert [(i.amount, i.get_expiry()) for i in limits.by_role["user"]] == [(60, 60), (1000, 3600)]
    assert limits.by_role["admin"] == []


async def test_websocket_handshakes_past_the_limit_are_refused() -> None:
    entered: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope["path"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    limits = policy(anonymous="1/minute")
    middleware = RateLimitMiddleware(inner, limits=limits)
    scope = {
        "type": "websocket",
        "path": "/v1/ws/chat",
        "headers": [],
        "client": ("192.0.2.9", 5000),
    }
    try:
        await middleware(dict(scope), receive, send)
        assert entered == ["/v1/ws/chat"]
        assert sent == []
        await middleware(dict(scope), receive, send)
        assert entered == ["/v1/ws/chat"]  # the app never saw the second one
        assert sent == [{"type": "websocket.close", "code": 1008}]
    finally:
        await limits.aclose()


async def test_the_memory_sweep_runs_at_most_once_a_second() -> None:
    """The stock storage starts a sweep over every key after nearly every request."""
    storage = open_storage("memory://")
    assert isinstance(storage, PacedMemoryStorage)
    limiter = MovingWindowRateLimiter(storage)
    item = parse("100/minute")
    try:
        assert await limiter.hit(item, "a")
        first = storage.timer
        assert first is not None  # the override is the hook limits really calls
        await asyncio.sleep(0.05)
        assert first.done()
        for n in range(20):
            assert await limiter.hit(item, str(n))
        assert storage.timer is first
    finally:
        await close_storage(storage)


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]), st.integers(1, 3), st.booleans()),
        min_size=1,
        max_size=80,
    ),
    notation=st.sampled_from(["5/second", "3 per 2 seconds", "10/minute"]),
)
def test_the_deque_window_counts_as_the_stock_storage_does(
    steps: list[tuple[float, int, bool]], notation: str
) -> None:
    """The same hits, costs and clock on both storages: the same verdicts and window stats."""
    item = parse(notation)

    async def run() -> None:
        clock = [1_000_000.0]
        ours, stock = PacedMemoryStorage(), MemoryStorage()
        mine, theirs = MovingWindowRateLimiter(ours), MovingWindowRateLimiter(stock)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time", lambda: clock[0])
            try:
                for advance, cost, other_key in steps:
                    clock[0] += advance
                    key = "b" if other_key else "a"
                    allowed = await mine.hit(item, key, cost=cost)
                    assert allowed == await theirs.hit(item, key, cost=cost)
                    got = await mine.get_window_stats(item, key)
                    expected = await theirs.get_window_stats(item, key)
                    assert got.remaining == expected.remaining
                    if got.remaining < item.amount:  # the oldest live entry's expiry
                        assert got.reset_time == expected.reset_time
                    else:  # empty (the stock storage reports an expired entry's time here)
                        assert got.reset_time == clock[0] + item.get_expiry()
                    assert await mine.test(item, key) == await theirs.test(item, key)
            finally:
                await close_storage(ours)
                await close_storage(stock)

    asyncio.run(run())


async def test_the_sweep_drops_expired_windows_and_counters() -> None:
    storage = PacedMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    try:
        assert await limiter.hit(parse("2/second"), "gone")
        assert await limiter.hit(parse("2/hour"), "kept")
        await storage.incr("counter", 0.01)
        await asyncio.sleep(1.1)
        await storage._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        assert list(storage.events) == [parse("2/hour").key_for("kept")]
        assert "counter" not in storage.storage
        # A cleared key starts again from an empty window.
        await limiter.clear(parse("2/hour"), "kept")
        assert await limiter.hit(parse("2/hour"), "kept")
        assert (await limiter.get_window_stats(parse("2/hour"), "kept")).remaining == 1
    finally:
        await close_storage(storage)
