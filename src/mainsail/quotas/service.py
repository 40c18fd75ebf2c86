"""Monthly budgets: reserve the worst case before a model call, settle to the real use after.

The role defaults come from settings; an admin may override them per user. The reservation is
committed before the upstream call (so concurrent calls see it) and settled in the background
after, so neither holds a row lock across a model call nor adds a round trip to the answer.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.db import Database, utcnow
from mainsail.core.errors import NotFound, TooManyRequests
from mainsail.core.logging import get_logger
from mainsail.identity import service as identity
from mainsail.llm.gateway import CallContext, Reservation
from mainsail.quotas import repository as repo
from mainsail.settings import QuotaSettings

log = get_logger(__name__)


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


class DbQuota:
    """The gateway's ``QuotaGuard`` on PostgreSQL."""

    def __init__(
        self, db: Database, settings: QuotaSettings, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._settling: set[asyncio.Task[None]] = set()

    async def reserve(self, ctx: CallContext, *, tokens: int, cost: Decimal) -> Reservation:
        if ctx.user_id is None:  # the system's own calls (jobs, evals) are not budgeted
            return Reservation(user_id=None, tokens=tokens, cost=cost)
        default = role_default(self.settings, ctx.role)
        now = self.clock()
        period = month_start(now)
        async with self.db.autocommit() as connection:  # one atomic statement, one round trip
            granted = await repo.reserve(
                connection,
                user_id=ctx.user_id,
                period=period,
                tokens=tokens,
                cost=cost,
                default_tokens=default.monthly_tokens,
                default_cost=default.monthly_cost_usd,
            )
        if not granted:
            raise await self._exceeded(ctx.user_id, ctx.role, now, tokens=tokens, cost=cost)
        return Reservation(user_id=ctx.user_id, tokens=tokens, cost=cost, handle=period)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
        if reservation.user_id is None:
            return
        task = asyncio.create_task(self._settle(reservation, tokens, cost))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, reservation: Reservation, tokens: int, cost: Decimal) -> None:
        if reservation.user_id is None or not isinstance(reservation.handle, date):
            return
        for attempt in range(5):
            try:
                async with self.db.autocommit() as connection:
                    await repo.settle(
                        connection,
                        user_id=reservation.user_id,
                        period=reservation.handle,
                        held_tokens=reservation.tokens,
                        held_cost=reservation.cost,
                        used_tokens=tokens,
                        used_cost=cost,
                    )
                return
            except Exception as exc:
                log.warning("quota_settle_failed", attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(0.2 * 2**attempt)
        # Given up: the hold stays (the user is under-served, never over-served).
        log.error("quota_settle_abandoned", user_id=str(reservation.user_id))

    async def drain(self) -> None:
        """Wait for settlements in flight (shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

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
    return await user_budget(session, settings, user_id, now=now)


def _money(value: object) -> str | None:
    return None if value is None else f"{Decimal(str(value)):.6f}"
