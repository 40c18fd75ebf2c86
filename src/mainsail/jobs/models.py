"""One row per job. State moves queued -> running -> succeeded, or through retrying back to
running, ending in ``dead`` (attempts exhausted: the dead-letter list) or ``failed``
(a permanent error, never retried)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, IdMixin, utcnow

QUEUED, RUNNING, SUCCEEDED, RETRYING, DEAD, FAILED = (
    "queued",
    "running",
    "succeeded",
    "retrying",
    "dead",
    "failed",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, RETRYING, DEAD, FAILED)
FINAL = (SUCCEEDED, DEAD, FAILED)


class Job(IdMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'retrying', 'dead', 'failed')",
            name="state",
        ),
        # What a claim scans: only the jobs that may still run.
        Index(
            "ix_jobs_runnable",
            "run_after",
            postgresql_where=text("state IN ('queued', 'retrying', 'running')"),
        ),
        Index("ix_jobs_state_created_at", "state", "created_at"),
    )

    kind: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Whose work this is (GET /jobs/{id} is owner-scoped); None for system jobs.
    owner_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    # While running: who holds it and until when, unless renewed.
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Celery executor: when the job was last sent to the broker.
    dispatched_at: Mapped[datetime | None]
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
