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
from contextlib import AsyncExitStack
from dataclasses import dataclass

from sqlalchemy.engine import URL

# Every table on one metadata, so foreign keys between domains resolve (documents -> users).
from mainsail import models  # noqa: F401
from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.core.notify import PgListener
from mainsail.documents.runtime import start_documents
from mainsail.identity import cache as identity_cache
from mainsail.jobs import repository as jobs_repository
from mainsail.jobs.service import JobRunner
from mainsail.llm.factory import build_gateway
from mainsail.llm.gateway import Gateway
from mainsail.quotas.service import DbQuota
from mainsail.search.runtime import register_jobs, start_index_versions, start_search
from mainsail.settings import Settings
from mainsail.usage.writer import UsageWriter

log = get_logger(__name__)


async def build_runner(
    settings: Settings, db: Database, gateway: Gateway | None = None
) -> JobRunner:
    """A runner with every job handler registered (``gateway``: for a provider embedder)."""
    runner = JobRunner(db, settings.jobs)
    documents = await start_documents(settings, db, gateway)
    # No result cache: a worker's searches only measure index versions.
    searcher = start_search(settings.search, db, documents.embedders, None)
    register_jobs(runner, documents, start_index_versions(settings, db, documents, searcher))
    return runner


@dataclass
class Metering:
    """The model gateway of a worker process, with its usage ledger and budget leases."""

    gateway: Gateway
    usage: UsageWriter
    quota: DbQuota

    async def flush(self) -> None:
        """Write back now what the jobs used, and give back idle budget leases."""
        await self.quota.flush(release_idle_after_s=0.0)
        await self.usage.flush()


async def metering(settings: Settings, db: Database, stack: AsyncExitStack) -> Metering | None:
    """The model gateway a worker needs when ``documents.embedder`` names a catalogue model:
    budgets and the usage ledger as in the service (its writers stop with ``stack``). None
    with the local model, which needs no gateway."""
    if settings.documents.embedder == "local":
        return None
    usage = UsageWriter(
        db,
        spill_dir=settings.data_dir / "spill",
        flush_interval_s=settings.usage.flush_interval_s,
        batch_size=settings.usage.batch_size,
        retention_days=settings.usage.raw_retention_days,
    )
    await usage.start()
    stack.push_async_callback(usage.stop)  # after the quota drain: runs last
    quota = DbQuota(db, settings.quota)
    await quota.start()
    stack.push_async_callback(quota.drain)
    gateway, adapters = build_gateway(settings.llm, usage=usage, quota=quota)
    for adapter in adapters:
        stack.push_async_callback(adapter.aclose)
    return Metering(gateway, usage, quota)


def run_celery_worker(settings: Settings, url: URL) -> None:
    """A Celery worker on the configured broker, running jobs by id (``JOBS__EXECUTOR=celery``)."""
    from mainsail.jobs.broker import QUEUE, make_celery

    runners: dict[str, JobRunner] = {}
    meters: dict[str, Metering | None] = {}
    # Lives as long as the pool's process. Its event loop runs only during a task, so the
    # usage ledger and budget leases are written back at the end of each one.
    stack = AsyncExitStack()

    async def run_job(job_id: uuid.UUID) -> bool:
        runner = runners.get("runner")
        if runner is None:  # in the pool's process, on its first task
            db = Database(url, settings.database)
            meter = meters["meter"] = await metering(settings, db, stack)
            runner = runners["runner"] = await build_runner(
                settings, db, meter.gateway if meter else None
            )
        try:
            return await runner.run_one(job_id)
        finally:
            if (meter := meters.get("meter")) is not None:
                await meter.flush()

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
    stack = AsyncExitStack()
    try:
        meter = await metering(settings, db, stack)
        runner = await build_runner(settings, db, meter.gateway if meter else None)
        listener = PgListener(db)
        listener.subscribe(
            jobs_repository.CHANNEL, runner.wake, on_gap=runner.wake, on_connected=runner.wake
        )
        if meter is not None:  # a role or budget change: leases under the old limit go back
            listener.subscribe(
                identity_cache.CHANNEL,
                meter.quota.user_changed,
                on_gap=lambda: None,
                on_connected=lambda: None,
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
        await stack.aclose()  # the last usage events and settled budgets, written
        await db.dispose()
