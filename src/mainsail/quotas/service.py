"""Monthly budgets: reserve the worst case before a model call, settle to the real use after.

The role defaults come from settings; an admin may override them per user.

Each process holds a *lease* per user and month: a slice of the budget reserved in
PostgreSQL with one conditional statement (used + reserved + slice <= limit, atomically on
the user's counter row). Calls reserve and settle against the lease in memory, so the hot
path makes no database round trip; the database sees one statement per lease refill and one
per flush. Every lease is itself a reservation in the counter, so all processes together can
never hold more than the limit: concurrent calls cannot overspend a budget by more than one
call's estimate (the estimate being a worst case, not even that). What a lease costs is that
a slice reserved by one process is not available to another until it is flushed back (idle
leases are released after ``quota.lease_idle_s``); a lease that cannot grow by a slice grows
by exactly what the call needs before refusing it.

A slice is ``quota.lease_calls`` calls' worth, doubled each time a lease needs another one
within a second of the last (up to ``_MAX_SLICE_FACTOR`` times; halved again when one lasts
more than four seconds), plus room for the calls waiting on the refill; and once a lease
has doubled, the next slice is reserved in the background when less than half of one is
left (until the budget refuses one: near its end, calls refill for themselves). A busy
caller's calls then neither wait for a refill nor queue behind one refill after another (at
32 concurrent calls that queue was the gateway's p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.db import Database, utcnow
from mainsail.core.errors import NotFound, TooManyRequests
from mainsail.core.logging import get_logger
from mainsail.identity import cache as identity_cache
from mainsail.identity import service as identity
from mainsail.llm.gateway import CallContext, Reservation
from mainsail.quotas import repository as repo
from mainsail.settings import QuotaSettings

log = get_logger(__name__)
# A lease refilled again within this many seconds doubles its next slice, up to this factor;
# one whose last slice lasted longer than _SLOW_REFILL_S halves it.
_FAST_REFILL_S = 1.0
_SLOW_REFILL_S = 4.0
_MAX_SLICE_FACTOR = 64


class QuotaExceeded(TooManyRequests):
    code, title = "quota_exceeded", "Monthly budget exhausted"


@dataclass(frozen=True, slots=True)
class Budget:
    monthly_tokens: int | None
    monthly_cost_usd: Decimal | None


def month_start(now: datetime) -> date:
    return now.astimezone(UTC).date().replace(day=1)


def next_month_start(now: datetime) -> datetime:
    first = month_start(now)
    year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def role_default(settings: QuotaSettings, role: str | None) -> Budget:
    if role == "admin":
        return Budget(settings.admin_monthly_tokens, settings.admin_monthly_cost_usd)
    return Budget(settings.user_monthly_tokens, settings.user_monthly_cost_usd)


@dataclass(slots=True)
class _Lease:
    user_id: uuid.UUID
    period: date
    granted_tokens: int = 0  # held in the counter row for this process
    granted_cost: Decimal = Decimal(0)
    inflight_tokens: int = 0  # reserved by calls in progress
    inflight_cost: Decimal = Decimal(0)
    used_tokens: int = 0  # settled calls, not yet written
    used_cost: Decimal = Decimal(0)
    last_used: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0  # calls waiting for the refill in progress
    slice_factor: int = 1  # the next slice, in quota.lease_calls
    last_refill: float = -math.inf

    def fits(self, tokens: int, cost: Decimal) -> bool:
        return (
            self.inflight_tokens + self.used_tokens + tokens <= self.granted_tokens
            and self.inflight_cost + self.used_cost + cost <= self.granted_cost
        )

    @property
    def busy(self) -> bool:
        return self.inflight_tokens > 0 or self.inflight_cost > 0


class DbQuota:
    """The gateway's ``QuotaGuard`` on PostgreSQL, with per-process budget leases."""

    def __init__(
        self,
        db: Database,
        settings: QuotaSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self._leases: dict[tuple[uuid.UUID, date], _Lease] = {}
        self._releasing: set[asyncio.Task[None]] = set()  # user_changed's, kept referenced
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._ahead: set[asyncio.Task[None]] = set()  # refills running in the background
        self.refills = 0  # lease statements run (for tests and benchmarks)
        self.waits = 0  # calls that waited for a refill

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="quota-flusher")

    async def reserve(self, ctx: CallContext, *, tokens: int, cost: Decimal) -> Reservation:
        if ctx.user_id is None:  # the system's own calls (jobs, evals) are not budgeted
            return Reservation(user_id=None, tokens=tokens, cost=cost)
        now = self.clock()
        key = (ctx.user_id, month_start(now))
        while True:
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease(*key)
            if lease.fits(tokens, cost):
                break
            self.waits += 1
            lease.waiting += 1
            try:
                await lease.lock.acquire()  # one refill at a time; the others then fit or refill
            finally:
                lease.waiting -= 1
            try:
                if self._leases.get(key) is not lease:
                    # Released while this call waited (the flusher skips leases with calls
                    # waiting; a safeguard all the same): what it grew would never be written
                    # back. Start over on the registered lease.
                    continue
                if not lease.fits(tokens, cost) and not await self._grow(lease, ctx, tokens, cost):
                    raise await self._exceeded(ctx.user_id, ctx.role, now, tokens=tokens, cost=cost)
            finally:
                lease.lock.release()
            break
        lease.inflight_tokens += tokens
        lease.inflight_cost += cost
        lease.last_used = self.monotonic()
        if (
            lease.slice_factor > 1
            and not lease.lock.locked()
            and self._running_low(lease, tokens, cost)
        ):
            self._refill_ahead(lease, ctx, tokens, cost)
        return Reservation(user_id=ctx.user_id, tokens=tokens, cost=cost, handle=lease)

    def _running_low(self, lease: _Lease, tokens: int, cost: Decimal) -> bool:
        """Less than half a slice of calls like this one left."""
        half = max(1, self.settings.lease_calls * lease.slice_factor // 2)
        return not lease.fits(tokens * half, cost * half)

    def _refill_ahead(self, lease: _Lease, ctx: CallContext, tokens: int, cost: Decimal) -> None:
        async def refill() -> None:
            lease.waiting += 1  # queued on the lock: the flusher must not give it back meanwhile
            try:
                await lease.lock.acquire()
            finally:
                lease.waiting -= 1
            try:
                if self._leases.get((lease.user_id, lease.period)) is not lease:
                    return  # given back meanwhile: a grant here would never be written back
                grown = not self._running_low(lease, tokens, cost) or await self._grow(
                    lease, ctx, tokens, cost, exact=False
                )
                if not grown:  # the budget is near its end: no more refills ahead
                    lease.slice_factor = 1
            except Exception as exc:  # a call that then lacks room refills (or fails) itself
                log.warning("quota_refill_failed", error=type(exc).__name__)
            finally:
                lease.lock.release()

        task = asyncio.create_task(refill(), name="quota-refill")
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
        lease = reservation.handle
        if reservation.user_id is None or not isinstance(lease, _Lease):
            return
        lease.inflight_tokens -= reservation.tokens
        lease.inflight_cost -= reservation.cost
        lease.used_tokens += tokens
        lease.used_cost += cost
        lease.last_used = self.monotonic()

    async def _grow(
        self, lease: _Lease, ctx: CallContext, tokens: int, cost: Decimal, *, exact: bool = True
    ) -> bool:
        """Reserve a slice for many calls like this one (and those waiting), or else one of
        ``lease_calls`` calls, or else (``exact``) exactly what it lacks."""
        lacking_tokens = max(
            lease.inflight_tokens + lease.used_tokens + tokens - lease.granted_tokens, 0
        )
        lacking_cost = max(
            lease.inflight_cost + lease.used_cost + cost - lease.granted_cost, Decimal(0)
        )
        now = self.monotonic()
        lasted = now - lease.last_refill  # how long the last slice served
        if lasted < _FAST_REFILL_S:
            lease.slice_factor = min(lease.slice_factor * 2, _MAX_SLICE_FACTOR)
        elif lasted > _SLOW_REFILL_S:
            lease.slice_factor = max(lease.slice_factor // 2, 1)
        lease.last_refill = now
        base = self.settings.lease_calls
        asks: list[tuple[int, Decimal]] = []
        for calls in (base * lease.slice_factor + lease.waiting, base, 0)[: 3 if exact else 2]:
            ask = (max(lacking_tokens, tokens * calls), max(lacking_cost, cost * calls))
            if ask not in asks:
                asks.append(ask)
        default = role_default(self.settings, ctx.role)
        for tried, (ask_tokens, ask_cost) in enumerate(asks):
            if tried:  # the budget has no room for a grown slice: start small again
                lease.slice_factor = 1
            self.refills += 1
            async with self.db.autocommit() as connection:  # one atomic statement
                granted = await repo.reserve(
                    connection,
                    user_id=lease.user_id,
                    period=lease.period,
                    tokens=ask_tokens,
                    cost=ask_cost,
                    default_tokens=default.monthly_tokens,
                    default_cost=default.monthly_cost_usd,
                )
            if granted:
                lease.granted_tokens += ask_tokens
                lease.granted_cost += ask_cost
                return True
        return False

    # --- writing back ---------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                await self.flush(release_idle_after_s=self.settings.lease_idle_s)
            except Exception as exc:  # the next round tries again; nothing is lost
                log.warning("quota_flush_failed", error=type(exc).__name__)

    async def flush(self, *, release_idle_after_s: float | None = 0.0) -> None:
        """Write settled use to the counters and give back what idle leases hold.
        ``release_idle_after_s=0`` releases every lease with no call in progress."""
        async with self._flush_lock:
            now = self.monotonic()
            for key, lease in list(self._leases.items()):
                idle = (
                    release_idle_after_s is not None
                    and not lease.busy
                    and now - lease.last_used >= release_idle_after_s
                    and not lease.lock.locked()
                    # A call queued on the lock (whose holder just let go) is about to use it.
                    and lease.waiting == 0
                )
                # Idle: give back the whole grant; otherwise convert the used part only.
                release_tokens = lease.granted_tokens if idle else lease.used_tokens
                release_cost = lease.granted_cost if idle else lease.used_cost
                if idle:
                    del self._leases[key]
                if release_tokens == 0 and release_cost == 0 and lease.used_tokens == 0:
                    continue
                try:
                    await self._write_back(
                        lease, held_tokens=release_tokens, held_cost=release_cost
                    )
                except BaseException:
                    if idle:
                        self._leases.setdefault(key, lease)
                    raise

    def user_changed(self, payload: str) -> None:
        """A ``mainsail_identity`` notification (a user's role, keys or budget changed, in
        any process): that user's leases are given back in the background."""
        try:
            user_id = uuid.UUID(payload)
        except ValueError:
            return
        if not any(key[0] == user_id for key in self._leases):
            return
        task = asyncio.create_task(self.release_user(user_id), name=f"quota-release-{user_id}")
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The leases stay; they go back when idle, as before the change.
            log.warning("quota_release_failed", error=type(task.exception()).__name__)

    async def give_back_quietly(self, user_id: uuid.UUID) -> None:
        """``release_user``, its failure logged (a background task after the response: the
        leases then go back when idle, or when the notification of the change arrives)."""
        try:
            await self.release_user(user_id)
        except Exception as exc:
            log.warning("quota_release_failed", error=type(exc).__name__)

    async def release_user(self, user_id: uuid.UUID) -> None:
        """Shrink the user's leases to what calls in progress hold and give the rest back.

        For when their limit changes (an admin's override, a new role): a slice reserved
        under the old limit would otherwise go on serving calls until the lease goes idle,
        which a busy caller's never does. The next call refills under the new limit.
        Only this process's leases: another process's go back when idle.
        """
        for key, lease in list(self._leases.items()):
            if key[0] != user_id:
                continue
            async with lease.lock:  # after a refill in progress, which adds to the grant
                lease.slice_factor = 1
                given_tokens = lease.granted_tokens - lease.inflight_tokens
                given_cost = lease.granted_cost - lease.inflight_cost
                if given_tokens or given_cost or lease.used_tokens:
                    await self._write_back(lease, held_tokens=given_tokens, held_cost=given_cost)

    async def _write_back(self, lease: _Lease, *, held_tokens: int, held_cost: Decimal) -> None:
        """Write the lease's settled use to its counter and give back ``held`` of its grant
        (the used part included: the counter holds it as reserved until then)."""
        used_tokens, used_cost = lease.used_tokens, lease.used_cost
        # Taken out before the await: calls meanwhile count towards the next write.
        lease.used_tokens -= used_tokens
        lease.used_cost -= used_cost
        lease.granted_tokens -= held_tokens
        lease.granted_cost -= held_cost
        try:
            async with self.db.autocommit() as connection:
                await repo.settle(
                    connection,
                    user_id=lease.user_id,
                    period=lease.period,
                    held_tokens=held_tokens,
                    held_cost=held_cost,
                    used_tokens=used_tokens,
                    used_cost=used_cost,
                )
        except BaseException:
            lease.used_tokens += used_tokens
            lease.used_cost += used_cost
            lease.granted_tokens += held_tokens
            lease.granted_cost += held_cost
            raise

    async def drain(self) -> None:
        """Stop the flusher and write everything back (shutdown; tests)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        # A refill or a give-back still running would change a lease after it was written back.
        await asyncio.gather(*self._ahead, *self._releasing, return_exceptions=True)
        for attempt in range(5):
            try:
                await self.flush(release_idle_after_s=0.0)
                return
            except Exception as exc:
                log.warning("quota_flush_failed", attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(0.2 * 2**attempt)
        # Given up: the holds stay (the user is under-served, never over-served).
        log.error("quota_flush_abandoned", leases=len(self._leases))

    async def _exceeded(
        self, user_id: uuid.UUID, role: str | None, now: datetime, *, tokens: int, cost: Decimal
    ) -> QuotaExceeded:
        async with self.db.unit_of_work() as session:
            status = await budget_status(session, self.settings, user_id, role=role, now=now)
        reset = next_month_start(now)
        return QuotaExceeded(
            f"This call could use up to {tokens} tokens (${cost:.6f}), more than the "
            f"remaining monthly budget; it resets at {reset.isoformat()}.",
            headers={"Retry-After": str(max(1, int((reset - now).total_seconds())))},
            extra={"reset_at": reset.isoformat(), "budget": status},
        )


async def budget_status(
    session: AsyncSession,
    settings: QuotaSettings,
    user_id: uuid.UUID,
    *,
    role: str | None,
    now: datetime,
) -> dict[str, object]:
    """Limits, use and what remains this month, as plain JSON-ready values."""
    budget = await effective_budget(session, settings, user_id, role=role)
    counter = await repo.get_counter(session, user_id, month_start(now))
    used_tokens = counter.tokens_used if counter else 0
    used_cost = counter.cost_used if counter else Decimal(0)
    held_tokens = counter.tokens_reserved if counter else 0
    held_cost = counter.cost_reserved if counter else Decimal(0)

    def remaining(limit: int | Decimal | None, used: int | Decimal, held: int | Decimal) -> object:
        return None if limit is None else max(limit - used - held, 0)

    return {
        "period_start": month_start(now).isoformat(),
        "reset_at": next_month_start(now).isoformat(),
        "monthly_tokens": budget.monthly_tokens,
        "monthly_cost_usd": _money(budget.monthly_cost_usd),
        "used_tokens": used_tokens,
        "used_cost_usd": _money(used_cost),
        "reserved_tokens": held_tokens,
        "reserved_cost_usd": _money(held_cost),
        "remaining_tokens": remaining(budget.monthly_tokens, used_tokens, held_tokens),
        "remaining_cost_usd": _money(remaining(budget.monthly_cost_usd, used_cost, held_cost)),
    }


async def effective_budget(
    session: AsyncSession, settings: QuotaSettings, user_id: uuid.UUID, *, role: str | None
) -> Budget:
    default = role_default(settings, role)
    override = await repo.get_limit(session, user_id)
    if override is None:
        return default
    return Budget(
        override.monthly_tokens if override.monthly_tokens is not None else default.monthly_tokens,
        override.monthly_cost_usd
        if override.monthly_cost_usd is not None
        else default.monthly_cost_usd,
    )


async def user_budget(
    session: AsyncSession, settings: QuotaSettings, user_id: uuid.UUID, *, now: datetime
) -> dict[str, object]:
    user = await identity.get_user(session, user_id)  # 404 for an unknown user
    override = await repo.get_limit(session, user_id)
    status = await budget_status(session, settings, user_id, role=user.role.value, now=now)
    status["override"] = {
        "monthly_tokens": override.monthly_tokens if override else None,
        "monthly_cost_usd": _money(override.monthly_cost_usd) if override else None,
    }
    return status


async def override_budget(
    session: AsyncSession,
    settings: QuotaSettings,
    user_id: uuid.UUID,
    *,
    monthly_tokens: int | None,
    monthly_cost_usd: Decimal | None,
    now: datetime,
) -> dict[str, object]:
    try:
        await identity.get_user(session, user_id)
    except NotFound:
        raise NotFound("User not found.") from None
    await repo.set_limit(session, user_id, tokens=monthly_tokens, cost=monthly_cost_usd)
    # Every process learns it at commit (the identity channel, as a role change is sent):
    # their budget leases, reserved under the old limit, are given back.
    await session.execute(select(func.pg_notify(identity_cache.CHANNEL, str(user_id))))
    return await user_budget(session, settings, user_id, now=now)


def _money(value: object) -> str | None:
    return None if value is None else f"{Decimal(str(value)):.6f}"
