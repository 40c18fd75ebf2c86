"""The job runner against the real jobs table: outcomes, retries, the dead-letter list, leases
that lapse, and exactly-once claims under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

from mainsail.jobs import repository
from mainsail.jobs import service as jobs
from mainsail.jobs.service import JobContext, PermanentError
from mainsail.settings import JobSettings
from tests.fixtures.app import wait_until
from tests.jobs.conftest import FAST_JOBS, MakeRunner


async def enqueue(app: FastAPI, kind: str = "work", **payload: Any) -> uuid.UUID:
    async with app.state.db.unit_of_work() as session:
        job = await jobs.enqueue(session, JobSettings(**FAST_JOBS), kind, payload, owner_id=None)
        return job.id


async def row(app: FastAPI, job_id: uuid.UUID) -> dict[str, Any]:
    async with app.state.db.engine.connect() as connection:
        result = await connection.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id})
        return dict(result.mappings().one())


async def test_a_job_runs_once_and_records_its_progress(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    seen: list[dict[str, Any]] = []

    async def work(ctx: JobContext) -> None:
        seen.append(ctx.payload)
        await ctx.progress(step=1)

    runner = await make_runner({"work": work})
    job_id = await enqueue(app, n=7)
    assert await runner.run_one() is True
    assert await runner.run_one() is False  # nothing left
    assert seen == [{"n": 7}]
    done = await row(app, job_id)
    assert (done["state"], done["attempts"], done["progress"]) == ("succeeded", 1, {"step": 1})
    assert done["finished_at"] is not None
    assert done["worker"] is None


async def test_transient_failures_retry_then_the_job_is_dead_and_can_be_requeued(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    calls = 0

    async def flaky(ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ConnectionError(f"upstream down ({calls})")

    runner = await make_runner({"work": flaky})
    job_id = await enqueue(app)
    for attempt in (1, 2):
        assert await runner.run_one()
        retrying = await row(app, job_id)
        assert (retrying["state"], retrying["attempts"]) == ("retrying", attempt)
        assert f"upstream down ({attempt})" in retrying["last_error"]
    assert await runner.run_one()
    dead = await row(app, job_id)
    assert (dead["state"], dead["attempts"]) == ("dead", 3)
    assert "ConnectionError" in dead["last_error"]
    assert await runner.run_one() is False  # dead jobs are not claimed

    async with app.state.db.unit_of_work() as session:
        from mainsail.jobs import repository

        _, requeued = await repository.requeue(session, job_id)
    assert requeued
    assert await runner.run_one()
    assert (await row(app, job_id))["state"] == "succeeded"
    assert calls == 4


async def test_a_permanent_error_fails_at_once_with_its_reason(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    async def corrupt(ctx: JobContext) -> None:
        raise PermanentError("The PDF is encrypted.")

    runner = await make_runner({"work": corrupt})
    job_id = await enqueue(app)
    assert await runner.run_one()
    failed = await row(app, job_id)
    assert (failed["state"], failed["attempts"], failed["last_error"]) == (
        "failed",
        1,
        "The PDF is encrypted.",
    )


async def test_a_job_whose_worker_vanished_is_taken_again_after_its_lease(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    from mainsail.jobs import repository

    job_id = await enqueue(app)
    async with app.state.db.autocommit() as connection:  # a worker claims it, then dies
        claimed = await repository.claim(connection, worker="gone", lease_s=0.3)
    assert claimed is not None
    ran: list[int] = []

    async def work(ctx: JobContext) -> None:
        ran.append(ctx.attempt)

    runner = await make_runner({"work": work})
    assert await runner.run_one() is False  # the lease still holds
    await asyncio.sleep(0.4)
    assert await runner.run_one() is True
    assert ran == [2]
    async with app.state.db.autocommit() as connection:  # the vanished worker cannot finish it
        assert not await repository.finish(connection, job_id, worker="gone", state="succeeded")
    assert (await row(app, job_id))["state"] == "succeeded"


async def test_a_long_job_keeps_its_lease(app: FastAPI, make_runner: MakeRunner) -> None:
    async def slow(ctx: JobContext) -> None:
        await asyncio.sleep(1.5)  # longer than the 1 s lease: renewed every third of it

    first = await make_runner({"work": slow})
    second = await make_runner({"work": slow})
    await enqueue(app)
    running = asyncio.create_task(first.run_one())
    await asyncio.sleep(1.2)
    assert await second.run_one() is False
    assert await running is True


async def test_concurrent_runners_run_each_job_exactly_once(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    counts: dict[str, int] = {}

    async def work(ctx: JobContext) -> None:
        counts[ctx.payload["n"]] = counts.get(ctx.payload["n"], 0) + 1
        await asyncio.sleep(0.01)

    for n in range(40):
        await enqueue(app, n=str(n))
    runners = [await make_runner({"work": work}, start=True, concurrency=2) for _ in range(3)]

    async def all_done() -> bool:
        return sum(r.completed for r in runners) >= 40

    await wait_until(all_done, within_s=20)
    assert counts == {str(n): 1 for n in range(40)}


async def test_a_queued_job_wakes_an_idle_runner_through_notify(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    from mainsail.core.notify import PgListener
    from mainsail.jobs.repository import CHANNEL

    done = asyncio.Event()

    async def work(ctx: JobContext) -> None:
        done.set()

    # Five minutes between polls: only the notification can wake it in time.
    runner = await make_runner({"work": work}, start=True, poll_interval_s=300)
    await asyncio.sleep(0.1)  # the runner has looked once and is waiting
    listener = PgListener(app.state.db)
    listener.subscribe(CHANNEL, runner.wake, on_gap=lambda: None, on_connected=lambda: None)
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), timeout=5)
        await enqueue(app)
        await asyncio.wait_for(done.wait(), timeout=5)
    finally:
        await listener.stop()


async def test_stopping_hands_a_running_job_back_without_counting_the_attempt(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    started = asyncio.Event()

    async def endless(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(3600)

    runner = await make_runner({"work": endless}, start=True)
    job_id = await enqueue(app)
    runner.wake()
    await asyncio.wait_for(started.wait(), timeout=5)
    await runner.stop()
    back = await row(app, job_id)
    assert (back["state"], back["attempts"], back["worker"]) == ("queued", 0, None)


async def test_a_job_whose_workers_all_died_ends_dead_and_its_kind_hears_of_it(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    """Every attempt's worker vanished: the next claim ends the job dead without running the
    handler, and the kind's ``gave_up`` hook learns why (once)."""
    ran: list[uuid.UUID] = []
    heard: list[tuple[uuid.UUID, str]] = []

    async def handler(ctx: JobContext) -> None:
        ran.append(ctx.id)

    async def gave_up(ctx: JobContext, reason: str) -> None:
        heard.append((ctx.id, reason))

    job_id = await enqueue(app)
    async with app.state.db.autocommit() as connection:
        for attempt in range(FAST_JOBS["max_attempts"]):
            claimed = await repository.claim(connection, worker=f"gone-{attempt}", lease_s=0.05)
            assert claimed is not None
            await asyncio.sleep(0.1)  # the lease lapses: its worker is gone
    runner = await make_runner({})
    runner.register("work", handler, gave_up=gave_up)
    assert await runner.run_one()
    assert not await runner.run_one()
    assert ran == []
    assert [job for job, _ in heard] == [job_id]
    assert "stopped before finishing" in heard[0][1]
    assert (await row(app, job_id))["state"] == "dead"


async def test_a_retry_and_a_requeued_job_are_sent_to_the_broker_again_when_due(
    app: FastAPI,
) -> None:
    """Celery executor: a job handed out once is sent again after its backoff (and after an
    admin's re-queue), not only once the resend period of the first send has passed."""
    resend_s = JobSettings(**FAST_JOBS).celery_visibility_timeout_s
    job_id = await enqueue(app)
    async with app.state.db.autocommit() as connection:
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == [job_id]
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == []
        assert await repository.claim(connection, worker="w", lease_s=60, job_id=job_id)
        await repository.finish(
            connection, job_id, worker="w", state="retrying", error="boom", retry_in_s=0.0
        )
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == [job_id]
        assert await repository.claim(connection, worker="w", lease_s=60, job_id=job_id)
        await repository.finish(connection, job_id, worker="w", state="dead", error="boom")
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == []
    async with app.state.db.unit_of_work() as session:
        _, requeued = await repository.requeue(session, job_id)
        assert requeued
    async with app.state.db.autocommit() as connection:
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == [job_id]
