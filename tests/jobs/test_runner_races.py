"""The job runner and the Celery dispatch path under races: lapsed leases of sibling lanes,
handlers raising CancelledError, dead Celery workers, a dispatcher stopped mid-batch, and a
wake-up that lands while a lane looks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

from mainsail.jobs import repository
from mainsail.jobs.service import JobContext
from mainsail.settings import JobSettings
from tests.fixtures.app import wait_until
from tests.jobs.conftest import FAST_JOBS, MakeRunner
from tests.jobs.test_runner import enqueue, row


async def lapse_lease(app: FastAPI, job_id: uuid.UUID) -> None:
    """What missed renewals (the database away for longer than the lease, a stalled event
    loop) leave behind: a running job whose lease is over."""
    async with app.state.db.engine.begin() as connection:
        await connection.execute(
            text("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = :id"),
            {"id": job_id},
        )


async def test_a_lane_whose_lease_lapsed_cannot_finish_the_run_a_sibling_lane_reclaimed(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    """Two lanes of one runner (concurrency > 1): the lane whose lease lapsed must not pass
    the ``worker = :worker`` check of ``renew``/``finish`` after its sibling re-claimed the
    job (each run has a name of its own), so it cannot end the newer run's job."""
    gates = {1: asyncio.Event(), 2: asyncio.Event()}
    started = {1: asyncio.Event(), 2: asyncio.Event()}

    async def work(ctx: JobContext) -> None:
        started[ctx.attempt].set()
        await gates[ctx.attempt].wait()

    # A long lease: no renewal happens within the test unless the test lapses it.
    runner = await make_runner({"work": work}, lease_s=30.0, concurrency=2)
    job_id = await enqueue(app)
    first = asyncio.create_task(runner.run_one())
    await asyncio.wait_for(started[1].wait(), 5)
    await lapse_lease(app, job_id)
    second = asyncio.create_task(runner.run_one())  # the sibling lane takes it again
    await asyncio.wait_for(started[2].wait(), 5)
    assert (await row(app, job_id))["attempts"] == 2

    gates[1].set()  # the stale run (attempt 1) ends first
    await asyncio.wait_for(first, 5)
    now = await row(app, job_id)
    # Attempt 2 is still running: the stale run must not have finished its job.
    assert (now["state"], now["attempts"]) == ("running", 2)
    gates[2].set()
    await asyncio.wait_for(second, 5)
    assert (await row(app, job_id))["state"] == "succeeded"


async def test_a_handler_raising_cancelled_error_does_not_kill_the_runner_lane(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    """A handler that raises ``CancelledError`` without being cancelled (a future some
    library cancelled) is a failure, not a stop: the lane lives on and runs the next job,
    and the attempt counts."""
    ran: list[str] = []

    async def broken(ctx: JobContext) -> None:
        raise asyncio.CancelledError()

    async def fine(ctx: JobContext) -> None:
        ran.append("fine")

    runner = await make_runner({"broken": broken, "fine": fine}, start=True, concurrency=1)
    broken_id = await enqueue(app, "broken")
    runner.wake()

    async def broken_tried() -> bool:
        return (await row(app, broken_id))["started_at"] is not None

    await wait_until(broken_tried, within_s=5)
    await asyncio.sleep(0.3)
    await enqueue(app, "fine")
    runner.wake()

    async def fine_ran() -> bool:
        return ran == ["fine"]

    await wait_until(fine_ran, within_s=5)
    assert [task.done() for task in runner._tasks] == [False] * len(runner._tasks)
    assert ran == ["fine"]
    assert (await row(app, broken_id))["attempts"] >= 1  # the run counted as an attempt


async def test_a_celery_job_whose_worker_died_is_sent_again_once_its_lease_lapses(
    app: FastAPI, make_runner: MakeRunner
) -> None:
    """Celery executor: a worker dies mid-job; the broker redelivers its task at once
    (``task_reject_on_worker_lost``), but the job's lease still holds, so the redelivered
    task's claim finds nothing and is acknowledged. The dispatcher must then send the job
    again once the lease lapses, not only after ``celery_visibility_timeout_s`` (2 h by
    default) since the first send."""
    resend_s = JobSettings().celery_visibility_timeout_s  # 7200, the default
    job_id = await enqueue(app)
    async with app.state.db.autocommit() as connection:
        assert await repository.take_due(connection, resend_s=resend_s, limit=10) == [job_id]
        # A Celery worker claims it, then its process is killed.
        assert await repository.claim(connection, worker="celery-a", lease_s=1.0, job_id=job_id)
    # The redelivered task reaches another worker while the lease still holds.
    runner = await make_runner({"work": lambda ctx: asyncio.sleep(0)})
    assert await runner.run_one(job_id) is False
    await asyncio.sleep(1.2)  # the lease lapses
    async with app.state.db.autocommit() as connection:
        due = await repository.take_due(connection, resend_s=resend_s, limit=10)
    assert due == [job_id]


async def test_jobs_marked_sent_but_never_sent_when_the_dispatcher_stops_are_sent_again(
    app: FastAPI,
) -> None:
    """Celery executor: ``dispatch_once`` marks up to 500 due jobs ``dispatched_at`` first, then
    sends them one by one. Stopping the service cancels it mid-batch; the jobs not sent yet
    lose their mark, so the next dispatcher sends them at once, not a visibility timeout
    (2 h by default) later."""
    import threading

    from mainsail.jobs.broker import Dispatcher

    release = threading.Event()
    sent: list[str] = []

    class SlowBroker:
        def send_task(self, name: str, args: list[str], queue: str) -> None:
            sent.append(args[0])
            release.wait(5)  # the broker is slow to answer

    settings = JobSettings(**{**FAST_JOBS, "executor": "celery"})
    job_ids = [await enqueue(app, n=str(n)) for n in range(3)]
    dispatcher = Dispatcher(app.state.db, settings, SlowBroker())  # type: ignore[arg-type]
    await dispatcher.start()

    async def sending() -> bool:
        return bool(sent)

    await wait_until(sending, within_s=5)
    await dispatcher.stop()  # the service shuts down
    release.set()
    never_sent = {job_id for job_id in job_ids if str(job_id) not in sent}
    assert len(never_sent) == 2
    async with app.state.db.autocommit() as connection:
        due = await repository.take_due(
            connection, resend_s=settings.celery_visibility_timeout_s, limit=10
        )
    assert never_sent <= set(due)


async def test_a_job_queued_while_an_idle_lane_looks_is_not_left_for_the_next_poll(
    app: FastAPI, make_runner: MakeRunner, monkeypatch: Any
) -> None:
    """A job committed (and its NOTIFY delivered) while an idle lane's claim is looking
    keeps its wake-up (the event is cleared before the claim, not after), and runs at once
    instead of at the next poll (``poll_interval_s``; 300 s here)."""
    done = asyncio.Event()
    original = repository.claim
    looked = 0

    async def work(ctx: JobContext) -> None:
        done.set()

    runner = await make_runner({"work": work}, poll_interval_s=300)

    async def claim(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
        nonlocal looked
        found = await original(*args, **kwargs)
        looked += 1
        if found is None and looked == 2:
            # Right after this look found nothing, a job is queued and its NOTIFY arrives.
            await enqueue(app)
            runner.wake()
        return found

    monkeypatch.setattr(repository, "claim", claim)
    await runner.start()
    await asyncio.sleep(0.2)  # the first look found nothing; the lane waits
    runner.wake()  # something else woke it: it looks again (the second look)
    await asyncio.wait_for(done.wait(), timeout=5)


async def test_a_broker_that_refuses_a_send_is_not_tried_for_every_job_of_the_batch(
    app: FastAPI,
) -> None:
    """The broker away: the first failed send ends the pass, and every job of the batch is
    due again (not one failed send, each maybe blocking in its own retries, per job)."""
    from mainsail.jobs.broker import Dispatcher

    tries: list[str] = []

    class DownBroker:
        def send_task(self, name: str, args: list[str], queue: str) -> None:
            tries.append(args[0])
            raise ConnectionError("broker down")

    settings = JobSettings(**{**FAST_JOBS, "executor": "celery"})
    job_ids = [await enqueue(app, n=str(n)) for n in range(3)]
    dispatcher = Dispatcher(app.state.db, settings, DownBroker())  # type: ignore[arg-type]
    assert await dispatcher.dispatch_once() == 0
    assert len(tries) == 1
    assert [(await row(app, job_id))["dispatched_at"] for job_id in job_ids] == [None] * 3
