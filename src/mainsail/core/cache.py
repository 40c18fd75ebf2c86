"""A small bytes cache with expiry: in process memory, or in Redis to share it across replicas.

Caches only ever save work: every failure of the store (Redis down, slow, full) reads as a miss
and a skipped write, logged, never an error for the request that asked.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

from mainsail.core.logging import get_logger

log = get_logger(__name__)


class ByteCache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent, expired or unreachable."""

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store for ``ttl_s`` seconds (best effort)."""

    async def delete(self, key: str) -> None:
        """Forget the entry, if there is one (best effort)."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryCache:
    """Least-recently-used entries in this process, bounded by count and by total bytes."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Any = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock() + ttl_s, value)
        self.size += len(value)
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def delete(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(value)

    async def aclose(self) -> None:
        self._entries.clear()
        self.size = 0


class RedisCache:
    """Entries in Redis under ``prefix``, expired by Redis itself (``SET ... PX``)."""

    def __init__(self, url: str, *, prefix: str, timeout_s: float = 0.25) -> None:
        from redis.asyncio import Redis

        self.prefix = prefix
        self.client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )

    async def get(self, key: str) -> bytes | None:
        try:
            value: bytes | None = await self.client.get(self.prefix + key)
        except Exception as exc:  # a cache that cannot answer is a miss
            log.warning("cache_unavailable", op="get", error=type(exc).__name__)
            return None
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self.client.set(self.prefix + key, value, px=max(int(ttl_s * 1000), 1))
        except Exception as exc:
            log.warning("cache_unavailable", op="set", error=type(exc).__name__)

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete(self.prefix + key)
        except Exception as exc:
            log.warning("cache_unavailable", op="delete", error=type(exc).__name__)

    async def aclose(self) -> None:
        await self.client.aclose()


def open_cache(
    url: str, *, prefix: str, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024
) -> ByteCache:
    """``memory://`` or ``redis://host:port/db`` (``rediss://`` and ``unix://`` too)."""
    if url.startswith("memory://"):
        return MemoryCache(max_entries=max_entries, max_bytes=max_bytes)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(url, prefix=prefix)
    raise ValueError(f"unsupported cache storage {url!r}; use memory:// or redis://")
