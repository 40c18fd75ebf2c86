"""Slows down password guessing: sign-in attempts counted per account and per client address.

An attempt is counted *before* the password is checked, in the same atomic step that tests
the limit, so a burst of concurrent guesses cannot all slip past a check-then-count gap.
A successful sign-in clears the account's counter; the address counter counts every attempt.

While the counters' storage is unreachable attempts are let through, as the request limiter
lets requests through: an outage of the counters must not lock everyone out. The password
hash's own cost still slows guessing down meanwhile.
"""

from __future__ import annotations

import math
import time

from limits.errors import StorageError

from mainsail.core.errors import TooManyRequests
from mainsail.core.logging import get_logger
from mainsail.core.ratelimit import RateLimiter, Window
from mainsail.identity.tokens import sha256_hex
from mainsail.settings import AuthSettings

log = get_logger(__name__)
# A storage outage is logged at most this often (as in ``ratelimits.policy``).
_OUTAGE_LOG_INTERVAL_S = 10.0


class LoginThrottle:
    def __init__(self, limiter: RateLimiter, settings: AuthSettings, *, prefix: str) -> None:
        """``prefix``: the deployment's namespace of counters (``RATE_LIMIT__KEY_PREFIX``),
        so deployments sharing one Redis count their sign-ins apart."""
        self.limiter = limiter
        self.prefix = prefix
        window = settings.login_failure_window_s
        self.per_account = Window(settings.login_max_failures_per_account, window)
        self.per_ip = Window(settings.login_max_attempts_per_ip, window)
        self._outage_logged_at = -math.inf

    def _account_key(self, email: str) -> str:
        # Hashed: the counter store (Redis, in the scaled shape) never holds addresses.
        return f"{self.prefix}:login:account:{sha256_hex(email)[:32]}"

    async def attempt(self, *, email: str, ip: str | None) -> None:
        """Count one attempt for the account (and the address, if given); 429 past a limit.

        The same answer whether or not the account exists, so the throttle is no oracle.
        """
        counters = [(self.per_account, self._account_key(email))]
        if ip is not None:
            counters.append((self.per_ip, f"{self.prefix}:login:ip:{ip}"))
        waits = []
        try:
            for window, key in counters:
                if not await self.limiter.hit(window, key):
                    waits.append(await self.limiter.retry_after(window, key) or 1)
        except StorageError as exc:
            self._outage(exc)
        if waits:
            raise TooManyRequests(
                "Too many sign-in attempts; try again later.",
                headers={"Retry-After": str(max(waits))},
            )

    async def succeeded(self, *, email: str) -> None:
        try:
            await self.limiter.clear(self.per_account, self._account_key(email))
        except StorageError as exc:
            self._outage(exc)

    def _outage(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._outage_logged_at >= _OUTAGE_LOG_INTERVAL_S:
            self._outage_logged_at = now
            log.warning(
                "login_throttle_storage_unavailable", error=type(exc.storage_error).__name__
            )
