"""``GET /jobs/{id}`` for a job's owner; the dead-letter list and re-queueing for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from mainsail.core.deps import SessionDep
from mainsail.core.errors import Conflict, NotFound
from mainsail.core.pagination import Page, PageParams
from mainsail.core.principal import Scope
from mainsail.identity.deps import AdminPrincipal, CurrentPrincipal, require_scope
from mainsail.jobs import repository
from mainsail.jobs.models import Job
from mainsail.jobs.schemas import JobOut, State

router = APIRouter(tags=["jobs"])


@router.get(
    "/jobs/{job_id}",
    summary="A job's state, attempts, progress and last error",
    # A user's jobs ingest their documents: a key that may not read documents reads no job.
    dependencies=[require_scope(Scope.DOCUMENTS_READ)],
)
async def read_job(job_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep) -> JobOut:
    job = await session.get(Job, job_id)
    if job is None or (not principal.is_admin and job.owner_id != principal.user_id):
        raise NotFound("No such job.")
    return JobOut.model_validate(job)


@router.get("/admin/jobs", summary="Jobs by state (state=dead: the dead-letter list)")
async def list_jobs(
    _: AdminPrincipal,
    session: SessionDep,
    page: Annotated[PageParams, Query()],
    state: Annotated[State | None, Query()] = None,
) -> Page[JobOut]:
    conditions = [] if state is None else [Job.state == state]
    total = await session.scalar(select(func.count()).select_from(Job).where(*conditions))
    rows = await session.scalars(
        select(Job)
        .where(*conditions)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(page.limit)
        .offset(page.offset)
    )
    return Page(
        items=[JobOut.model_validate(row) for row in rows],
        total=int(total or 0),
        limit=page.limit,
        offset=page.offset,
    )


@router.post(
    "/admin/jobs/{job_id}/requeue",
    summary="Run a dead or failed job again, with a fresh set of attempts",
    responses={409: {"description": "The job is not dead or failed"}},
)
async def requeue_job(job_id: uuid.UUID, _: AdminPrincipal, session: SessionDep) -> JobOut:
    job, requeued = await repository.requeue(session, job_id)
    if job is None:
        raise NotFound("No such job.")
    if not requeued:
        raise Conflict(f"The job is {job.state}; only dead or failed jobs are re-queued.")
    return JobOut.model_validate(job)
