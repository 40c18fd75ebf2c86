"""Who counts against which limits, and whether the next request fits."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError

from mainsail.core.logging import get_logger
from mainsail.core.ratelimit import client_address, close_storage, open_request_storage
from mainsail.settings import RateLimitSettings

log = get_logger(__name__)

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
ANONYMOUS = "anonymous"
# A storage outage is logged at most this often; requests pass meanwhile (fail open).
_OUTAGE_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one request, and what the ``RateLimit-*`` headers report: the limit
    that refused it, or else the one closest to running out."""

    allowed: bool
    item: RateLimitItem
    remaining: int
    reset_s: int  # seconds until that limit has room again

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.item.amount).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_s).encode()),
        ]


class RateLimits:
    """The limits of each kind of caller on one shared storage."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        self.storage = open_request_storage(settings.storage_url)
        self.limiter = _STRATEGIES[settings.strategy](self.storage)
        self.by_role: dict[str, list[RateLimitItem]] = {
            "user": _items(settings.user),
            "admin": _items(settings.admin),
            ANONYMOUS: _items(settings.anonymous),
        }
        self.prefix = settings.key_prefix
        self.forwarded_for_hops = settings.forwarded_for_hops
        exempt = settings.exempt_paths
        self._exempt_exact = frozenset(p for p in exempt if not p.endswith("*"))
        self._exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))
        self._outage_logged_at = -math.inf

    def exempt(self, path: str) -> bool:
        return path in self._exempt_exact or (
            bool(self._exempt_prefixes) and path.startswith(self._exempt_prefixes)
        )

    async def check(self, role: str, kind: str, ident: str) -> Verdict | None:
        """Counts one request for the caller ``kind:ident`` under ``role``'s limits.

        None when the role is unlimited or the storage is unreachable (requests pass then;
        an outage of the counters must not become an outage of the API).
        """
        items = self.by_role.get(role)
        if items is None:  # a role without its own setting counts as a user
            items = self.by_role["user"]
        if not items:
            return None
        try:
            return await self._check(items, kind, ident)
        except StorageError as exc:
            now = time.monotonic()
            if now - self._outage_logged_at >= _OUTAGE_LOG_INTERVAL_S:
                self._outage_logged_at = now
                log.warning(
                    "rate_limit_storage_unavailable", error=type(exc.storage_error).__name__
                )
            return None

    async def _check(self, items: list[RateLimitItem], kind: str, ident: str) -> Verdict | None:
        limiter = self.limiter
        key = (self.prefix, kind, ident)
        # A request one limit refuses is counted against none: the others are tested first
        # (the first one's hit tests it). With one limit, as usual, that costs nothing.
        for item in items[1:]:
            if not await limiter.test(item, *key):
                return await self._refused(item, key)
        closest: Verdict | None = None
        for item in items:
            # The hit is one atomic step (a lock in memory, a Lua script in Redis): of N
            # concurrent requests exactly as many pass as the window has room for.
            if not await limiter.hit(item, *key):
                # The first limit, or a later one that filled up since its test: later limits
                # are not counted for a refused request.
                return await self._refused(item, key)
            stats = await limiter.get_window_stats(item, *key)
            remaining = max(0, stats.remaining)
            if closest is None or remaining < closest.remaining:
                closest = Verdict(True, item, remaining, _reset_s(item, stats.reset_time))
        return closest

    async def _refused(self, item: RateLimitItem, key: tuple[str, str, str]) -> Verdict:
        stats = await self.limiter.get_window_stats(item, *key)
        return Verdict(False, item, 0, max(1, _reset_s(item, stats.reset_time)))

    def client_address(self, peer: str | None, forwarded_for: list[bytes]) -> str:
        """The address anonymous requests are counted by: ``core.ratelimit.client_address``,
        shared with the sign-in throttle so that both count the same client."""
        return client_address(peer, forwarded_for, hops=self.forwarded_for_hops)

    async def aclose(self) -> None:
        await close_storage(self.storage)


def _reset_s(item: RateLimitItem, reset_time: float) -> int:
    """Seconds until the limit has room again."""
    return min(item.get_expiry(), max(0, math.ceil(reset_time - time.time())))


def _items(notation: str) -> list[RateLimitItem]:
    return parse_many(notation) if notation else []
