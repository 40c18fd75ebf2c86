"""Usage reports, read from the hourly rollups (never from the raw events)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.principal import Principal
from mainsail.quotas import service as quotas
from mainsail.settings import QuotaSettings
from mainsail.usage import repository as repo


async def usage_this_month(
    session: AsyncSession, settings: QuotaSettings, principal: Principal, *, now: datetime
) -> dict[str, object]:
    start = quotas.month_start(now)
    since = datetime(start.year, start.month, 1, tzinfo=UTC)
    rows = await repo.usage_by_day_and_model(session, principal.user_id, since=since)
    days = [
        {
            "day": row.day.date().isoformat(),
            "model": row.model,
            "requests": int(row.requests),
            "errors": int(row.errors),
            "cache_hits": int(row.cache_hits),
            "tokens_in": int(row.tokens_in),
            "tokens_out": int(row.tokens_out),
            "cost_usd": f"{Decimal(row.cost_usd):.6f}",
        }
        for row in rows
    ]
    budget = await quotas.budget_status(
        session, settings, principal.user_id, role=principal.role.value, now=now
    )
    return {
        "budget": budget,
        "days": days,
        "totals": {
            "requests": sum(d["requests"] for d in days),
            "tokens_in": sum(d["tokens_in"] for d in days),
            "tokens_out": sum(d["tokens_out"] for d in days),
            "cost_usd": f"{sum((Decimal(str(d['cost_usd'])) for d in days), Decimal(0)):.6f}",
        },
    }
