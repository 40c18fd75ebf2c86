"""Moving-window counters on the ``limits`` library: memory in one process, Redis across many."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


@dataclass(frozen=True, slots=True)
class Window:
    amount: int
    seconds: int

    @property
    def item(self) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.amount, self.seconds)


class RateLimiter:
    def __init__(self, storage_url: str) -> None:
        url = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
        self.storage = storage_from_string(url)
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
        if isinstance(self.storage, MemoryStorage):
            # MemoryStorage.clear() pops the key without the lock its own expiry task holds,
            # and that task then dies on a KeyError. Emptying the window under the lock is the
            # same reset, and the expiry task drops the empty key itself.
            key = window.item.key_for(*keys)
            async with self.storage.locks[key]:
                self.storage.events[key] = []
            return
        await self.limiter.clear(window.item, *keys)
