"""The Celery executor (the scaled shape): the jobs table stays the source of truth, and the
broker only carries "run job X" messages.

The service's ``Dispatcher`` sends each runnable job's id to the broker (woken by NOTIFY,
polling as a fallback) and marks it ``dispatched_at``; a send that fails is retried on the next
pass, and a job whose message was lost is sent again after the visibility timeout. Workers
(``mainsail worker`` with ``JOBS__EXECUTOR=celery``) run the task by claiming that job with the
same ``FOR UPDATE SKIP LOCKED`` claim as the in-process executor, so a duplicate message finds
nothing to do. Tasks are acknowledged late and rejected when their worker dies, so the broker
hands them to another worker; the job's lease decides who may finish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from celery import Celery

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.jobs import repository
from mainsail.settings import JobSettings

log = get_logger(__name__)
TASK = "mainsail.run_job"
QUEUE = "mainsail"


def make_celery(
    settings: JobSettings,
    run_job: Callable[[uuid.UUID], Awaitable[bool]] | None = None,
) -> Celery:
    """The Celery app; with ``run_job`` (workers only) the task that runs a job by id."""
    app = Celery("mainsail", broker=settings.celery_broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
    )
    if run_job is not None:
        loops: dict[int, asyncio.AbstractEventLoop] = {}

        @app.task(name=TASK)  # type: ignore[untyped-decorator]
        def run(job_id: str) -> bool:
            # One event loop per worker process (made after the fork), kept between tasks so
            # the process's database pool and loaded model are reused.
            loop = loops.get(os.getpid())
            if loop is None:
                loop = loops[os.getpid()] = asyncio.new_event_loop()
            return loop.run_until_complete(run_job(uuid.UUID(job_id)))

    return app


class Dispatcher:
    def __init__(self, db: Database, settings: JobSettings, celery: Celery) -> None:
        self.db = db
        self.settings = settings
        self.celery = celery
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def wake(self, _payload: str = "") -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="jobs-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before looking: a job queued meanwhile is looked at next
            try:
                await self.dispatch_once()
            except Exception:
                log.exception("jobs_dispatch_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)

    async def dispatch_once(self) -> int:
        async with self.db.autocommit() as connection:
            due = await repository.take_due(
                connection, resend_s=self.settings.celery_visibility_timeout_s, limit=500
            )
        done = 0
        try:
            for job_id in due:
                try:
                    await asyncio.to_thread(self._send, job_id)
                except Exception as exc:  # the broker is away: send them on the next pass
                    log.warning("jobs_send_failed", job_id=str(job_id), error=type(exc).__name__)
                    async with self.db.autocommit() as connection:
                        await repository.undispatch(connection, due[done:])
                    return done  # not one failed send per job of the batch
                self.sent += 1
                done += 1
        except BaseException:
            # Stopped part-way: the jobs marked as sent but not sent are due again now, not a
            # visibility timeout later (the one being sent may go twice; its duplicate task
            # finds it claimed and does nothing).
            with contextlib.suppress(Exception):
                async with self.db.autocommit() as connection:
                    await repository.undispatch(connection, due[done:])
            raise
        return done

    def _send(self, job_id: uuid.UUID) -> Any:
        return self.celery.send_task(TASK, args=[str(job_id)], queue=QUEUE)
