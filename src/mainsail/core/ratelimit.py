"""Moving-window counters on the ``limits`` library: memory in one process, Redis across many."""

from __future__ import annotations

import ipaddress
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import Scope


@dataclass(frozen=True, slots=True)
class Window:
    amount: int
    seconds: int

    @property
    def item(self) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.amount, self.seconds)


class PacedMemoryStorage(MemoryStorage):
    """``limits``' memory storage with a moving window that costs the same per request at any
    limit, and a sweep at most once a second.

    The stock storage keeps a key's moving window as a list, newest entry first, and inserts
    each hit at its front: a copy of the whole window per request, so the cost grows with the
    limit (at 1,000,000/minute the limiter took a third of the gateway's CPU per request).
    Here a window is a deque of the entries' expiry times, oldest first: a hit appends, and
    expired entries are dropped from the left as they are met. Counting is the stock one: a
    hit is refused when the live entries plus its cost would exceed the limit.

    The stock storage also starts a sweep over every key whenever a request finds the previous
    sweep finished, which is nearly every request: a scan of all counters (sliding window
    counter: 0.8 ms per request with 10,000 keys). Reads check expiry themselves, so the sweep
    only frees memory and can wait. Nothing here awaits while it holds a window, so one event
    loop needs no lock around it.
    """

    SWEEP_INTERVAL_S = 1.0
    _next_sweep = 0.0
    events: dict[str, deque[float]]  # type: ignore[assignment]  # expiry times, oldest first

    # Overrides the name-mangled ``MemoryStorage.__schedule_expiry`` its methods call.
    async def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]

    # Overrides the sweep that ``__schedule_expiry`` starts (the stock one slices lists).
    async def _MemoryStorage__expire_events(self) -> None:  # noqa: N802
        now = time.time()
        for key, window in list(self.events.items()):
            if not _live(window, now):
                self.events.pop(key, None)
        for key, expires in list(self.expirations.items()):
            if expires <= now:  # fixed and sliding window counters
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        await self._MemoryStorage__schedule_expiry()
        now = time.time()
        window = self.events.get(key)
        if window is None:
            window = self.events[key] = deque()
        if _live(window, now) + amount > limit:
            return False
        window.extend(itertools.repeat(now + expiry, amount))
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(when the oldest live entry was made, how many are live); (now, 0) if none."""
        now = time.time()
        window = self.events.get(key)
        if not window or not _live(window, now):
            return now, 0
        # As the stock storage reports it: an entry that expires this instant still refuses a
        # hit, but is no longer counted in the window.
        ending = 0
        while ending < len(window) and window[ending] <= now:
            ending += 1
        if ending == len(window):
            return now, 0
        return window[ending] - expiry, len(window) - ending


def _live(window: deque[float], now: float) -> int:
    """Drops the expired entries (an entry counts until its expiry time, inclusive); returns
    how many are left."""
    while window and window[0] < now:
        window.popleft()
    return len(window)


def open_storage(storage_url: str, **options: Any) -> Storage:
    """The async storage for ``memory://`` or ``redis://...`` (``async+`` may be omitted).

    Redis goes through redis-py's asyncio client (``limits`` would default to coredis, whose
    releases pin an older ``packaging``). Nothing connects until the first counter is used.
    """
    url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
    if url.startswith("async+memory:"):
        return PacedMemoryStorage(url, **options)
    if url.startswith(("async+redis:", "async+rediss:", "async+redis+unix:")):
        options.setdefault("implementation", "redispy")
    storage = storage_from_string(url, **options)
    if not isinstance(storage, Storage):  # pragma: no cover - async+ URLs give async storages
        raise TypeError(f"not an async rate-limit storage: {type(storage).__name__}")
    return storage


def open_request_storage(storage_url: str) -> Storage:
    """``open_storage`` for counters on the request path: its errors raised as ``limits``'
    ``StorageError`` (for the caller to fail open on), and a Redis that stops answering given
    up on within a second instead of holding every request."""
    options: dict[str, Any] = {"wrap_exceptions": True}
    if not storage_url.removeprefix("async+").startswith("memory"):
        options.update(socket_timeout=1.0, socket_connect_timeout=1.0)
    return open_storage(storage_url, **options)


async def close_storage(storage: Storage) -> None:
    """Stops a memory storage's expiry task, or closes a Redis client's connections."""
    if isinstance(storage, MemoryStorage):
        timer = getattr(storage, "timer", None)
        if timer is not None and not timer.done():
            timer.cancel()
        return
    client = getattr(getattr(storage, "bridge", None), "storage", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()


def client_address(peer: str | None, forwarded_for: Iterable[bytes], *, hops: int) -> str:
    """The address a client is counted by (request limits, sign-in attempts).

    With ``hops`` = N, the Nth entry from the right of X-Forwarded-For (the one the outermost
    trusted proxy saw); entries left of it are whatever the client wrote. An IPv6 client is
    counted by its /64, which one subscriber usually holds whole; an IPv4 client that a
    dual-stack listener reports as ``::ffff:a.b.c.d`` by its IPv4 address (the /64 of every
    such address is ``::``).
    """
    address = peer or "unknown"
    if hops:
        entries = [
            entry.strip()
            for value in forwarded_for
            for entry in value.decode("latin-1").split(",")
            if entry.strip()
        ]
        if len(entries) >= hops:
            address = entries[-hops]
    if ":" in address:
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
            if mapped is not None:
                return str(mapped)
            return str(ipaddress.IPv6Network(f"{address}/64", strict=False).network_address)
        except ValueError:
            return address
    return address


def request_client_address(scope: Scope, *, hops: int) -> str:
    """``client_address`` of an HTTP or WebSocket request."""
    forwarded = (
        [value for name, value in scope["headers"] if name == b"x-forwarded-for"] if hops else []
    )
    client = scope.get("client")
    return client_address(client[0] if client else None, forwarded, hops=hops)


class RateLimiter:
    """One moving window per key, on a storage opened with ``open_request_storage``: callers
    catch ``limits.errors.StorageError`` to fail open."""

    def __init__(self, storage_url: str) -> None:
        self.storage = open_request_storage(storage_url)
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def retry_after(self, window: Window, *keys: str) -> int | None:
        """Seconds until ``keys`` may be hit again, or None while the window has room."""
        if await self.limiter.test(window.item, *keys):
            return None
        stats = await self.limiter.get_window_stats(window.item, *keys)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def hit(self, window: Window, *keys: str) -> bool:
        return await self.limiter.hit(window.item, *keys)

    async def clear(self, window: Window, *keys: str) -> None:
        await self.limiter.clear(window.item, *keys)
