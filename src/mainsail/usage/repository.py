"""Usage SQL: batch inserts of raw events, additive upserts of rollups, purges, reports."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.llm.gateway import UsageEvent as UsageRecord
from mainsail.usage.models import NOBODY, UsageEvent, UsageRollup


async def insert_events(session: AsyncSession, records: Sequence[UsageRecord]) -> None:
    await session.execute(insert(UsageEvent), [asdict(record) for record in records])


def rollup_rows(records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
    """Sum records into one row per (user, model, hour)."""
    rows: dict[tuple[uuid.UUID, str, datetime], dict[str, Any]] = {}
    for record in records:
        hour = record.created_at.replace(minute=0, second=0, microsecond=0)
        key = (record.user_id or NOBODY, record.model, hour)
        row = rows.setdefault(
            key,
            {
                "user_id": key[0],
                "model": key[1],
                "hour": hour,
                "requests": 0,
                "errors": 0,
                "cache_hits": 0,
                "tokens_in": 0,
                "tokens_out": 0,
                "cost_usd": 0,
            },
        )
        row["requests"] += 1
        row["errors"] += record.status != "ok"
        row["cache_hits"] += record.cache_hit
        row["tokens_in"] += record.tokens_in
        row["tokens_out"] += record.tokens_out
        row["cost_usd"] += record.cost_usd
    return list(rows.values())


async def add_to_rollups(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = pg_insert(UsageRollup).values(rows)
    added = statement.excluded
    table = UsageRollup.__table__.c
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["user_id", "model", "hour"],
            set_={
                name: table[name] + getattr(added, name)
                for name in (
                    "requests",
                    "errors",
                    "cache_hits",
                    "tokens_in",
                    "tokens_out",
                    "cost_usd",
                )
            },
        )
    )


async def purge_events_before(session: AsyncSession, cutoff: datetime, *, limit: int) -> int:
    """Delete up to ``limit`` raw events older than ``cutoff``; returns how many went."""
    doomed = select(UsageEvent.id).where(UsageEvent.created_at < cutoff).limit(limit)
    result = await session.execute(delete(UsageEvent).where(UsageEvent.id.in_(doomed)))
    return int(getattr(result, "rowcount", 0) or 0)


async def usage_by_day_and_model(
    session: AsyncSession, user_id: uuid.UUID, *, since: datetime
) -> list[Any]:
    day = func.date_trunc("day", UsageRollup.hour).label("day")
    statement = (
        select(
            day,
            UsageRollup.model,
            func.sum(UsageRollup.requests).label("requests"),
            func.sum(UsageRollup.errors).label("errors"),
            func.sum(UsageRollup.cache_hits).label("cache_hits"),
            func.sum(UsageRollup.tokens_in).label("tokens_in"),
            func.sum(UsageRollup.tokens_out).label("tokens_out"),
            func.sum(UsageRollup.cost_usd).label("cost_usd"),
        )
        .where(UsageRollup.user_id == user_id, UsageRollup.hour >= since)
        .group_by(day, UsageRollup.model)
        .order_by(day, UsageRollup.model)
    )
    return list((await session.execute(statement)).all())
