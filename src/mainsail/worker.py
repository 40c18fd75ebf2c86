"""A process that runs jobs and serves no HTTP: ``mainsail worker``.

The same handlers the service runs in process; a deployment may run any number of these
beside (or instead of) the service's own executor. Each job is claimed once (``FOR UPDATE
SKIP LOCKED``), a killed worker's job is retaken when its lease lapses, and SIGTERM hands a
running job back before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

from sqlalchemy.engine import URL

# Every table on one metadata, so foreign keys between domains resolve (documents -> users).
from mainsail import models  # noqa: F401
from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.core.notify import PgListener
from mainsail.documents.pipeline import INGEST
from mainsail.documents.runtime import start_documents
from mainsail.jobs import repository as jobs_repository
from mainsail.jobs.service import JobRunner
from mainsail.settings import Settings

log = get_logger(__name__)


async def build_runner(settings: Settings, db: Database) -> JobRunner:
    """A runner with every job handler registered."""
    runner = JobRunner(db, settings.jobs)
    documents = await start_documents(settings, db)
    runner.register(INGEST, documents.ingestor)
    return runner


def run_celery_worker(settings: Settings, url: URL) -> None:
    """A Celery worker on the configured broker, running jobs by id (``JOBS__EXECUTOR=celery``)."""
    from mainsail.jobs.broker import QUEUE, make_celery

    runners: dict[str, JobRunner] = {}

    async def run_job(job_id: uuid.UUID) -> bool:
        runner = runners.get("runner")
        if runner is None:  # in the pool's process, on its first task
            runner = runners["runner"] = await build_runner(
                settings, Database(url, settings.database)
            )
        return await runner.run_one(job_id)

    app = make_celery(settings.jobs, run_job)
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={settings.jobs.concurrency}",
            f"--queues={QUEUE}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


async def run_worker(settings: Settings, url: URL) -> None:
    db = Database(url, settings.database)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        runner = await build_runner(settings, db)
        listener = PgListener(db)
        listener.subscribe(
            jobs_repository.CHANNEL, runner.wake, on_gap=runner.wake, on_connected=runner.wake
        )
        await listener.start()
        await runner.start()
        log.info("worker_started", worker=runner.worker, concurrency=settings.jobs.concurrency)
        await stop.wait()
        log.info("worker_stopping", worker=runner.worker)
        await runner.stop()
        await listener.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await db.dispose()
