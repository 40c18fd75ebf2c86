"""Readiness checks: one registry, each dependency adds a named check to it.

A check is an async callable that returns normally when its dependency is usable and raises
``NotReady`` (or any exception) with a short reason otherwise. ``GET /ready`` runs them all
concurrently, each under a timeout, and names every failing dependency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mainsail.core.db import Database
from mainsail.core.migrations import head_revisions

Check = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """A dependency is not usable; the message is safe to show to a caller."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        body: dict[str, object] = {
            "status": "ok" if self.ok else "failing",
            "latency_ms": self.latency_ms,
        }
        if self.error:
            body["error"] = self.error
        return body


class ReadinessRegistry:
    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def run(self) -> list[CheckResult]:
        return list(await asyncio.gather(*(self._run_one(n, c) for n, c in self._checks.items())))

    async def _run_one(self, name: str, check: Check) -> CheckResult:
        started = time.perf_counter()
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                await check()
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g}s"
        except NotReady as exc:
            error = str(exc)
        except Exception as exc:
            # Class name only: driver messages can carry hosts, users or paths.
            error = f"unreachable ({type(exc).__name__})"
        latency = round((time.perf_counter() - started) * 1000, 2)
        return CheckResult(name=name, ok=error is None, latency_ms=latency, error=error)


def database_checks(db: Database) -> dict[str, Check]:
    """The foundation's own checks: the database answers, and its schema is at head."""

    async def database() -> None:
        await db.ping()

    async def migrations() -> None:
        try:
            current = await db.current_revision()
        except Exception as exc:
            raise NotReady(f"cannot read the schema version ({type(exc).__name__})") from exc
        heads = head_revisions()
        if current not in heads:
            expected = ", ".join(sorted(heads))
            raise NotReady(
                f"schema at {current or 'no revision'}, expected {expected}; "
                "run `mainsail migrate upgrade`"
            )

    return {"database": database, "migrations": migrations}
