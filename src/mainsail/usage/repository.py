"""Usage SQL: batch inserts of raw events, additive upserts of rollups, purges, reports."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.ids import uuid7
from mainsail.llm.gateway import UsageEvent as UsageRecord
from mainsail.usage.models import NOBODY, UsageEvent, UsageRollup

_RECORD_FIELDS = tuple(f.name for f in fields(UsageRecord))
_EVENT_COLUMNS = ("id", *_RECORD_FIELDS)
_values = attrgetter(*_RECORD_FIELDS)


async def insert_events(session: AsyncSession, records: Sequence[UsageRecord]) -> None:
    """Binary COPY inside the session's transaction: a few microseconds per event, where an
    ORM bulk insert spends tens in Python."""
    driver = await _driver(session)
    await driver.copy_records_to_table(
        UsageEvent.__tablename__,
        columns=_EVENT_COLUMNS,
        records=[(uuid7(), *_values(record)) for record in records],
    )


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


_ROLLUP_UPSERT = """
    INSERT INTO usage_rollups AS r
        (user_id, model, hour, requests, errors, cache_hits, tokens_in, tokens_out, cost_usd)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (user_id, model, hour) DO UPDATE SET
        requests = r.requests + EXCLUDED.requests,
        errors = r.errors + EXCLUDED.errors,
        cache_hits = r.cache_hits + EXCLUDED.cache_hits,
        tokens_in = r.tokens_in + EXCLUDED.tokens_in,
        tokens_out = r.tokens_out + EXCLUDED.tokens_out,
        cost_usd = r.cost_usd + EXCLUDED.cost_usd
"""
_ROLLUP_FIELDS = (
    "user_id", "model", "hour", "requests", "errors", "cache_hits", "tokens_in", "tokens_out",
    "cost_usd",
)  # fmt: skip


async def add_to_rollups(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One prepared statement, whatever the batch: the driver keeps it prepared."""
    if not rows:
        return
    driver = await _driver(session)
    await driver.executemany(
        _ROLLUP_UPSERT, [tuple(row[name] for name in _ROLLUP_FIELDS) for row in rows]
    )


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


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
