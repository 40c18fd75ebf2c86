"""Idempotency SQL: single statements, each atomic on its own (run on autocommit connections).

Times come from the database clock (``now()``), so replicas with drifting clocks agree on
when a claim lapses or a key expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mainsail.idempotency.models import DONE, RUNNING, IdempotencyKey

T = IdempotencyKey


@dataclass(frozen=True, slots=True)
class KeyRow:
    fingerprint: str
    state: str
    scopes: list[str]
    lapsed: bool  # a running claim nobody renewed in time, or an expired answer
    status_code: int | None
    headers: list[list[str]] | None
    body: bytes | None


async def claim(
    connection: AsyncConnection,
    *,
    user_id: uuid.UUID,
    key: str,
    fingerprint: str,
    method: str,
    path: str,
    scopes: list[str],
    owner: uuid.UUID,
    lease: timedelta,
    ttl: timedelta,
) -> bool:
    """Take the key: insert it, or take over a lapsed claim or an expired answer. True if the
    key is now ours (``owner``); False if someone else's claim or answer stands."""
    now = func.now()
    statement = insert(T).values(
        user_id=user_id,
        key=key,
        fingerprint=fingerprint,
        method=method,
        path=path[:512],
        state=RUNNING,
        scopes=scopes,
        owner=owner,
        locked_until=now + lease,
        created_at=now,
        expires_at=now + ttl,
    )
    new = statement.excluded
    upsert = statement.on_conflict_do_update(
        index_elements=[T.user_id, T.key],
        set_={
            "fingerprint": new.fingerprint,
            "method": new.method,
            "path": new.path,
            "state": RUNNING,
            "scopes": new.scopes,
            "owner": new.owner,
            "locked_until": new.locked_until,
            "created_at": new.created_at,
            "expires_at": new.expires_at,
            "status_code": None,
            "response_headers": None,
            "response_body": None,
        },
        where=or_(T.expires_at <= now, and_(T.state == RUNNING, T.locked_until <= now)),
    ).returning(T.owner)
    taken = await connection.scalar(upsert)
    return bool(taken == owner)


async def find(connection: AsyncConnection, *, user_id: uuid.UUID, key: str) -> KeyRow | None:
    now = func.now()
    lapsed = or_(T.expires_at <= now, and_(T.state == RUNNING, T.locked_until <= now))
    row = (
        await connection.execute(
            select(
                T.fingerprint,
                T.state,
                T.scopes,
                lapsed.label("lapsed"),
                T.status_code,
                T.response_headers,
                T.response_body,
            ).where(T.user_id == user_id, T.key == key)
        )
    ).one_or_none()
    if row is None:
        return None
    return KeyRow(
        fingerprint=row.fingerprint,
        state=row.state,
        scopes=list(row.scopes),
        lapsed=bool(row.lapsed),
        status_code=row.status_code,
        headers=row.response_headers,
        body=row.response_body,
    )


async def renew(
    connection: AsyncConnection,
    *,
    user_id: uuid.UUID,
    key: str,
    owner: uuid.UUID,
    lease: timedelta,
) -> bool:
    """Extend our claim; False if it is no longer ours."""
    result = await connection.execute(
        update(T)
        .where(T.user_id == user_id, T.key == key, T.owner == owner, T.state == RUNNING)
        .values(locked_until=func.now() + lease)
    )
    return bool(result.rowcount)


async def store(
    connection: AsyncConnection,
    *,
    user_id: uuid.UUID,
    key: str,
    owner: uuid.UUID,
    status_code: int,
    headers: list[list[str]],
    body: bytes,
    ttl: timedelta,
) -> bool:
    """Record the answer under our claim; False if the claim was lost (it lapsed)."""
    result = await connection.execute(
        update(T)
        .where(T.user_id == user_id, T.key == key, T.owner == owner, T.state == RUNNING)
        .values(
            state=DONE,
            owner=None,
            locked_until=None,
            status_code=status_code,
            response_headers=headers,
            response_body=body,
            expires_at=func.now() + ttl,
        )
    )
    return bool(result.rowcount)


async def release(
    connection: AsyncConnection, *, user_id: uuid.UUID, key: str, owner: uuid.UUID
) -> None:
    """Give the key up (the attempt has no answer worth keeping): a retry may run afresh."""
    await connection.execute(
        delete(T).where(T.user_id == user_id, T.key == key, T.owner == owner, T.state == RUNNING)
    )


async def purge_expired(connection: AsyncConnection, *, limit: int) -> int:
    """Delete up to ``limit`` expired keys; the number deleted. Rows being taken over right
    now are skipped (locked), and a row taken over before the lock no longer matches."""
    batch = (
        select(T.user_id, T.key)
        .where(T.expires_at <= func.now())
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await connection.execute(delete(T).where(tuple_(T.user_id, T.key).in_(batch)))
    return int(result.rowcount)
