"""Quota SQL. The reservation is one statement: it adds the hold only if used + held + new
stays within the limit, atomically per (user, month) row, so concurrent calls serialize on
that row and can never overspend together."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mainsail.quotas.models import QuotaCounter, QuotaLimit

_RESERVE = text(
    """
    WITH lim AS (
        SELECT COALESCE(l.monthly_tokens, CAST(:default_tokens AS bigint)) AS max_tokens,
               COALESCE(l.monthly_cost_usd, CAST(:default_cost AS numeric)) AS max_cost
        FROM (SELECT 1) AS one
        LEFT JOIN quota_limits AS l ON l.user_id = :user_id
    )
    INSERT INTO quota_counters AS q
        (user_id, period, tokens_used, cost_used, tokens_reserved, cost_reserved, updated_at)
    SELECT :user_id, :period, 0, 0, :tokens, :cost, now()
    FROM lim
    WHERE (lim.max_tokens IS NULL OR :tokens <= lim.max_tokens)
      AND (lim.max_cost IS NULL OR :cost <= lim.max_cost)
    ON CONFLICT (user_id, period) DO UPDATE SET
        tokens_reserved = q.tokens_reserved + EXCLUDED.tokens_reserved,
        cost_reserved = q.cost_reserved + EXCLUDED.cost_reserved,
        updated_at = now()
    WHERE ((SELECT max_tokens FROM lim) IS NULL
           OR q.tokens_used + q.tokens_reserved + EXCLUDED.tokens_reserved
              <= (SELECT max_tokens FROM lim))
      AND ((SELECT max_cost FROM lim) IS NULL
           OR q.cost_used + q.cost_reserved + EXCLUDED.cost_reserved
              <= (SELECT max_cost FROM lim))
    RETURNING q.user_id
    """
)


async def reserve(
    session: AsyncSession | AsyncConnection,
    *,
    user_id: uuid.UUID,
    period: date,
    tokens: int,
    cost: Decimal,
    default_tokens: int | None,
    default_cost: Decimal | None,
) -> bool:
    result = await session.execute(
        _RESERVE,
        {
            "user_id": user_id,
            "period": period,
            "tokens": tokens,
            "cost": cost,
            "default_tokens": default_tokens,
            "default_cost": default_cost,
        },
    )
    return result.first() is not None


async def settle(
    session: AsyncSession | AsyncConnection,
    *,
    user_id: uuid.UUID,
    period: date,
    held_tokens: int,
    held_cost: Decimal,
    used_tokens: int,
    used_cost: Decimal,
) -> None:
    counter = QuotaCounter.__table__.c
    await session.execute(
        update(QuotaCounter)
        .where(QuotaCounter.user_id == user_id, QuotaCounter.period == period)
        .values(
            tokens_reserved=counter.tokens_reserved - held_tokens,
            cost_reserved=counter.cost_reserved - held_cost,
            tokens_used=counter.tokens_used + used_tokens,
            cost_used=counter.cost_used + used_cost,
        )
    )


async def get_counter(
    session: AsyncSession, user_id: uuid.UUID, period: date
) -> QuotaCounter | None:
    return await session.get(QuotaCounter, (user_id, period))


async def get_limit(session: AsyncSession, user_id: uuid.UUID) -> QuotaLimit | None:
    return await session.get(QuotaLimit, user_id)


async def set_limit(
    session: AsyncSession, user_id: uuid.UUID, *, tokens: int | None, cost: Decimal | None
) -> None:
    values: dict[str, Any] = {
        "user_id": user_id,
        "monthly_tokens": tokens,
        "monthly_cost_usd": cost,
    }
    statement = pg_insert(QuotaLimit).values(values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["user_id"],
            set_={"monthly_tokens": tokens, "monthly_cost_usd": cost, "updated_at": text("now()")},
        )
    )
