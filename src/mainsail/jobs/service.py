"""Executors of jobs. ``JobRunner`` runs handlers in this process (the embedded shape);
the Celery task in ``jobs.celery`` calls the same ``JobRunner.run_one`` by job id.

Error policy: a handler raising ``PermanentError`` fails the job at once (``failed``, with the
reason); any other exception is transient: the job is retried with exponential backoff and
jitter until ``max_attempts``, then it is ``dead``. A worker that dies mid-job leaves its lease
to lapse; the next claim takes the job again (counting the attempt), and handlers are written
to resume rather than repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.jobs import repository
from mainsail.jobs.models import DEAD, FAILED, QUEUED, RETRYING, SUCCEEDED, Job
from mainsail.settings import JobSettings

log = get_logger(__name__)


class PermanentError(Exception):
    """The job cannot succeed however often it runs (a corrupt file); ``reason`` is shown to
    its owner."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class JobContext:
    """What a handler gets: its job, and a way to report progress."""

    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    owner_id: uuid.UUID | None
    attempt: int
    max_attempts: int
    db: Database
    worker: str
    _progress: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def claimed(cls, row: Mapping[str, Any], *, db: Database, worker: str) -> JobContext:
        """The context of a job ``worker`` claimed (a row of ``repository.claim``)."""
        return cls(
            id=row["id"],
            kind=row["kind"],
            payload=row["payload"],
            owner_id=row["owner_id"],
            attempt=row["attempts"],
            max_attempts=row["max_attempts"],
            db=db,
            worker=worker,
        )

    async def progress(self, **values: Any) -> None:
        self._progress.update(values)
        async with self.db.autocommit() as connection:
            await repository.set_progress(
                connection, self.id, worker=self.worker, progress=dict(self._progress)
            )


Handler = Callable[[JobContext], Coroutine[Any, Any, None]]
GiveUp = Callable[[JobContext, str], Coroutine[Any, Any, None]]


async def enqueue(
    session: AsyncSession,
    settings: JobSettings,
    kind: str,
    payload: dict[str, Any],
    *,
    owner_id: uuid.UUID | None,
) -> Job:
    return await repository.enqueue(
        session, kind, payload, owner_id=owner_id, max_attempts=settings.max_attempts
    )


async def pending(session: AsyncSession, kind: str, payload: dict[str, Any]) -> bool:
    """Whether the same job (kind, and a payload holding ``payload``) is queued, running or
    due to be retried: a caller that must not queue it twice asks first (two at once may
    still both queue it, so such a job must be idempotent)."""
    return await repository.pending(session, kind, payload)


def backoff_s(settings: JobSettings, attempt: int) -> float:
    """Exponential with full jitter over the upper half: base * 2^(attempt-1), capped."""
    ceiling = min(settings.backoff_base_s * 2.0 ** max(attempt - 1, 0), settings.backoff_max_s)
    return float(ceiling / 2 + random.random() * ceiling / 2)  # noqa: S311 - jitter


class JobRunner:
    def __init__(
        self,
        db: Database,
        settings: JobSettings,
        *,
        handlers: dict[str, Handler] | None = None,
        worker: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.give_ups: dict[str, GiveUp] = {}
        # Kinds that may run for hours (rebuilding an index): they get lanes of their own, so
        # uploads keep being ingested meanwhile.
        self.long_kinds: tuple[str, ...] = ()
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._wakes: list[asyncio.Event] = []  # one per lane: no lane clears another's
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.completed = 0  # runs finished by this runner, any outcome

    def register(
        self, kind: str, handler: Handler, *, long: bool = False, gave_up: GiveUp | None = None
    ) -> None:
        """``long``: the kind runs in the ``long_concurrency`` lanes, never in the others.
        ``gave_up``: called with the reason when a job of the kind ends ``dead`` without its
        handler running (its workers died on every attempt, the last one included), so what
        the job was for (a document, an index version) does not stay "in progress" for ever.
        """
        self.handlers[kind] = handler
        if gave_up is not None:
            self.give_ups[kind] = gave_up
        if long and kind not in self.long_kinds:
            self.long_kinds = (*self.long_kinds, kind)

    def wake(self, _payload: str = "") -> None:
        """Called when a job was queued (NOTIFY): look now instead of at the next poll."""
        for event in self._wakes:
            event.set()

    async def start(self) -> None:
        self._stopping = False
        for index in range(self.settings.concurrency):
            self._tasks.append(asyncio.create_task(self._loop(False), name=f"jobs-{index}"))
        if self.long_kinds:
            for index in range(self.settings.long_concurrency):
                self._tasks.append(asyncio.create_task(self._loop(True), name=f"jobs-long-{index}"))

    async def stop(self) -> None:
        """Stops taking jobs; a job still running is handed back (its attempt not counted)."""
        self._stopping = True
        self.wake()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, long: bool) -> None:
        wake = asyncio.Event()
        self._wakes.append(wake)
        try:
            await self._lane(long, wake)
        finally:
            self._wakes.remove(wake)

    async def _lane(self, long: bool, wake: asyncio.Event) -> None:
        while not self._stopping:
            # Cleared before looking, not after: a job queued while this lane looks (its
            # NOTIFY lands between the claim and the wait) is then not left for the next poll.
            wake.clear()
            try:
                ran = await self.run_one(long=long)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: keep the loop, try again later
                log.exception("job_loop_error")
                ran = False
            if ran:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.poll_interval_s)

    async def run_one(self, job_id: uuid.UUID | None = None, *, long: bool | None = None) -> bool:
        """Claims and runs one job (the next runnable one, or ``job_id``); False if none.
        ``long``: only a long kind (True), only another kind (False), either (None)."""
        # Each run has a name of its own: a lane whose lease lapsed must not renew, report on
        # or finish the run another lane of this runner claimed since.
        worker = f"{self.worker}:{uuid.uuid4().hex[:8]}"
        async with self.db.autocommit() as connection:
            row = await repository.claim(
                connection,
                worker=worker,
                lease_s=self.settings.lease_s,
                job_id=job_id,
                kinds=self.long_kinds if long else None,
                exclude_kinds=self.long_kinds if long is False else (),
            )
        if row is None:
            return False
        await self._execute(JobContext.claimed(row, db=self.db, worker=worker))
        self.completed += 1
        return True

    async def _execute(self, ctx: JobContext) -> None:
        handler = self.handlers.get(ctx.kind)
        log.info("job_started", job_id=str(ctx.id), kind=ctx.kind, attempt=ctx.attempt)
        if ctx.attempt > ctx.max_attempts:  # its workers kept dying: stop feeding it to them
            reason = "The job's worker stopped before finishing, each try."
            gave_up = self.give_ups.get(ctx.kind)
            if gave_up is not None:
                # First, and idempotent: if it fails, the job stays claimed until its lease
                # lapses and the next claim tries again, instead of a dead job whose document
                # stays "processing".
                try:
                    await gave_up(ctx, reason)
                except Exception:
                    log.exception("job_give_up_failed", job_id=str(ctx.id), kind=ctx.kind)
                    return
            await self._finish(ctx, DEAD, reason)
            return
        if handler is None:
            await self._finish(ctx, FAILED, f"No handler for jobs of kind {ctx.kind!r}.")
            return
        lost = asyncio.Event()
        work = asyncio.create_task(handler(ctx), name=f"job-{ctx.id}")
        keeper = asyncio.create_task(self._keep_lease(ctx, work, lost), name=f"lease-{ctx.id}")
        try:
            try:
                await work
            finally:
                keeper.cancel()
                with contextlib.suppress(BaseException):
                    await keeper
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            stopping = bool(current and current.cancelling())
            if lost.is_set() and not stopping:
                log.warning("job_lease_lost", job_id=str(ctx.id))
                return  # another worker holds it now
            if stopping:
                await self._finish(ctx, QUEUED)  # stopping: hand it back, attempt not counted
                raise
            # The handler raised CancelledError of its own (nobody cancelled this lane): a
            # failure like any other, or the lane would end and the job loop for ever.
            await self._failed(ctx, exc)
        except PermanentError as exc:
            await self._finish(ctx, FAILED, exc.reason)
        except Exception as exc:
            await self._failed(ctx, exc)
        else:
            await self._finish(ctx, SUCCEEDED)

    async def _failed(self, ctx: JobContext, exc: BaseException) -> None:
        """A run that raised: retried after a backoff, or dead when its attempts are spent."""
        log.warning("job_failed", job_id=str(ctx.id), kind=ctx.kind, error=repr(exc)[:500])
        message = f"{type(exc).__name__}: {exc}"[:2000]
        if self._exhausted(ctx):
            await self._finish(ctx, DEAD, message)
        else:
            retry_in = backoff_s(self.settings, ctx.attempt)
            await self._finish(ctx, RETRYING, message, retry_in_s=retry_in)

    @staticmethod
    def _exhausted(ctx: JobContext) -> bool:
        return ctx.attempt >= ctx.max_attempts

    async def _keep_lease(
        self, ctx: JobContext, work: asyncio.Task[None], lost: asyncio.Event
    ) -> None:
        """Renews the lease every third of it; cancels the work if the lease was lost."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            try:
                async with self.db.autocommit() as connection:
                    held = await repository.renew(
                        connection, ctx.id, worker=ctx.worker, lease_s=self.settings.lease_s
                    )
            except Exception:
                log.warning("job_lease_renew_failed", job_id=str(ctx.id))
                continue
            if not held:
                lost.set()
                work.cancel()
                return

    async def _finish(
        self,
        ctx: JobContext,
        state: str,
        error: str | None = None,
        *,
        retry_in_s: float | None = None,
    ) -> bool:
        """Whether the job was still this worker's to finish."""
        async with self.db.autocommit() as connection:
            finished = await repository.finish(
                connection,
                ctx.id,
                worker=ctx.worker,
                state=state,
                error=error,
                retry_in_s=retry_in_s,
            )
        log.info("job_finished", job_id=str(ctx.id), kind=ctx.kind, state=state)
        return finished
