"""The job table's statements. Claims use ``FOR UPDATE SKIP LOCKED``, so any number of
executors (in-process tasks, other replicas, Celery workers) take each job exactly once; a
running job whose lease lapsed (its worker died) is claimable again."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mainsail.core.db import utcnow
from mainsail.jobs.models import DEAD, FAILED, QUEUED, RETRYING, RUNNING, SUCCEEDED, Job

CHANNEL = "mainsail_jobs"

_CLAIM = """
UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = :worker,
       lease_until = now() + make_interval(secs => :lease_s), updated_at = now(),
       started_at = coalesce(started_at, now()),
       -- claimed: if this run's worker dies, the job is due to be sent again (Celery) as
       -- soon as the lease lapses, not a visibility timeout after the send that started it
       dispatched_at = NULL
WHERE id = (
    SELECT id FROM jobs
    WHERE ((state IN ('queued', 'retrying') AND run_after <= now())
           OR (state = 'running' AND lease_until < now()))
      {only}
    ORDER BY run_after, id
    FOR UPDATE SKIP LOCKED
    LIMIT 1
)
RETURNING id, kind, payload, owner_id, attempts, max_attempts
"""


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    *,
    owner_id: uuid.UUID | None,
    max_attempts: int,
) -> Job:
    """Adds a job in the caller's transaction; executors are woken when it commits."""
    job = Job(
        kind=kind,
        payload=payload,
        owner_id=owner_id,
        max_attempts=max_attempts,
        state=QUEUED,
        attempts=0,
        progress={},
    )
    session.add(job)
    await session.flush()
    await session.execute(select(func.pg_notify(CHANNEL, kind)))
    return job


async def pending(session: AsyncSession, kind: str, payload: dict[str, Any]) -> bool:
    """Whether a job of ``kind`` whose payload holds ``payload`` is queued, running or due
    to be retried."""
    found = await session.scalar(
        select(Job.id)
        .where(
            Job.kind == kind,
            Job.state.in_((QUEUED, RUNNING, RETRYING)),
            Job.payload.contains(payload),
        )
        .limit(1)
    )
    return found is not None


async def claim(
    connection: AsyncConnection,
    *,
    worker: str,
    lease_s: float,
    job_id: uuid.UUID | None = None,
    kinds: tuple[str, ...] | None = None,
    exclude_kinds: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """Takes the next runnable job (or the one given), counting an attempt; only of
    ``kinds`` when given, never of ``exclude_kinds``."""
    clauses: list[str] = []
    params: dict[str, Any] = {"worker": worker, "lease_s": lease_s}
    if job_id is not None:
        clauses.append("AND id = :job_id")
        params["job_id"] = job_id
    if kinds is not None:
        clauses.append("AND kind = ANY(CAST(:kinds AS text[]))")
        params["kinds"] = list(kinds)
    if exclude_kinds:
        clauses.append("AND kind <> ALL(CAST(:exclude_kinds AS text[]))")
        params["exclude_kinds"] = list(exclude_kinds)
    only = " ".join(clauses)
    row = (await connection.execute(text(_CLAIM.format(only=only)), params)).mappings().first()
    return dict(row) if row is not None else None


async def renew(
    connection: AsyncConnection, job_id: uuid.UUID, *, worker: str, lease_s: float
) -> bool:
    """Extends the lease; False when the job is no longer this worker's."""
    result = await connection.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state == RUNNING)
        # The database's clock, as claims compare leases with it (not this host's).
        .values(lease_until=func.now() + timedelta(seconds=lease_s), updated_at=func.now())
    )
    return bool(result.rowcount)


async def set_progress(
    connection: AsyncConnection, job_id: uuid.UUID, *, worker: str, progress: dict[str, Any]
) -> None:
    await connection.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state == RUNNING)
        .values(progress=progress, updated_at=utcnow())
    )


async def finish(
    connection: AsyncConnection,
    job_id: uuid.UUID,
    *,
    worker: str,
    state: str,
    error: str | None = None,
    retry_in_s: float | None = None,
) -> bool:
    """Ends this worker's run: succeeded, failed, dead, or retrying after ``retry_in_s``;
    ``queued`` hands an interrupted run back without counting its attempt."""
    now = func.now()  # the database's clock, which claims compare run_after with
    values: dict[str, Any] = {
        "state": state,
        "worker": None,
        "lease_until": None,
        "updated_at": now,
        "last_error": error,
    }
    if state in (SUCCEEDED, FAILED, DEAD):
        values["finished_at"] = now
    if state in (RETRYING, QUEUED):
        # Runnable again: the Celery dispatcher sends it when due, not only after the resend
        # period of the send that started this run.
        values["dispatched_at"] = None
    if state == RETRYING:
        values["run_after"] = now + timedelta(seconds=retry_in_s or 0)
    if state == QUEUED:
        values["attempts"] = Job.attempts - 1
        values.pop("last_error")
    if state == SUCCEEDED:
        values.pop("last_error")
    result = await connection.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.state == RUNNING)
        .values(**values)
    )
    return bool(result.rowcount)


async def requeue(session: AsyncSession, job_id: uuid.UUID) -> tuple[Job | None, bool]:
    """Puts a dead or failed job back in the queue with a fresh set of attempts; the bool says
    whether it was (only dead and failed jobs are)."""
    job = await session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None, False
    if job.state not in (DEAD, FAILED):
        return job, False
    job.state, job.attempts, job.run_after = QUEUED, 0, utcnow()
    job.finished_at = job.dispatched_at = None
    await session.flush()
    await session.execute(select(func.pg_notify(CHANNEL, job.kind)))
    return job, True


_DUE = """
UPDATE jobs SET dispatched_at = now()
WHERE id IN (
    SELECT id FROM jobs
    WHERE ((state IN ('queued', 'retrying') AND run_after <= now())
           OR (state = 'running' AND lease_until < now()))
      AND (dispatched_at IS NULL OR dispatched_at < now() - make_interval(secs => :resend_s))
    ORDER BY run_after, id
    FOR UPDATE SKIP LOCKED
    LIMIT :limit
)
RETURNING id
"""


async def take_due(connection: AsyncConnection, *, resend_s: float, limit: int) -> list[uuid.UUID]:
    """Runnable jobs not sent to the broker lately, marked as sent now (Celery executor).

    A job whose task was lost (a broker restart, a send that failed) is sent again once
    ``resend_s`` has passed; a duplicate task finds the job claimed and does nothing.
    """
    rows = await connection.execute(text(_DUE), {"resend_s": resend_s, "limit": limit})
    return [row[0] for row in rows]


async def undispatch(connection: AsyncConnection, job_ids: list[uuid.UUID]) -> None:
    """Marks jobs as not sent, so the dispatcher sends them on its next pass."""
    if job_ids:
        await connection.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=None))
