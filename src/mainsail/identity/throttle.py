"""Slows down password guessing: failed logins counted per account and per client address."""

from __future__ import annotations

from mainsail.core.errors import TooManyRequests
from mainsail.core.ratelimit import RateLimiter, Window
from mainsail.identity.tokens import sha256_hex
from mainsail.settings import AuthSettings


class LoginThrottle:
    def __init__(self, limiter: RateLimiter, settings: AuthSettings) -> None:
        self.limiter = limiter
        window = settings.login_failure_window_s
        self.per_account = Window(settings.login_max_failures_per_account, window)
        self.per_ip = Window(settings.login_max_failures_per_ip, window)

    def _keys(self, email: str, ip: str) -> tuple[str, str]:
        # Hashed: the counter store (Redis, in the scaled shape) never holds addresses.
        return f"login:account:{sha256_hex(email)[:32]}", f"login:ip:{ip}"

    async def check(self, *, email: str, ip: str) -> None:
        """Raise 429 while either counter is exhausted (same answer for unknown accounts)."""
        account, address = self._keys(email, ip)
        waits = [
            await self.limiter.retry_after(self.per_account, account),
            await self.limiter.retry_after(self.per_ip, address),
        ]
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise TooManyRequests(
                "Too many failed sign-in attempts; try again later.",
                headers={"Retry-After": str(wait)},
            )

    async def record_failure(self, *, email: str, ip: str) -> None:
        account, address = self._keys(email, ip)
        await self.limiter.hit(self.per_account, account)
        await self.limiter.hit(self.per_ip, address)

    async def record_success(self, *, email: str) -> None:
        account, _ = self._keys(email, "")
        await self.limiter.clear(self.per_account, account)
