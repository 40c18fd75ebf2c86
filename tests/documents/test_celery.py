"""The scaled shape: the service sends jobs to a real Redis broker and a real Celery worker
process (`mainsail worker` with JOBS__EXECUTOR=celery) runs them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.documents.conftest import Upload, chunk_rows, essay, wait_for_status, worker_env
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL, redis_url: str) -> Settings:
    return make_settings(
        database_url,
        jobs={"executor": "celery", "celery_broker_url": redis_url, "poll_interval_s": 0.5},
    )


def start_celery_worker(database_url: URL, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = worker_env(
        database_url,
        JOBS__EXECUTOR="celery",
        JOBS__CELERY_BROKER_URL=redis_url,
        JOBS__CONCURRENCY="1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "mainsail", "worker", "--no-migrate"],
        env=env,
        cwd=Path(__file__).parent,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def test_a_celery_worker_ingests_what_the_service_dispatches(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    database_url: URL,
    redis_url: str,
    tmp_path: Path,
) -> None:
    first = await upload(alice, essay(5).encode(), "one.txt")
    second = await upload(alice, essay(4, seed=2).encode(), "two.txt")
    assert first.status_code == second.status_code == 202
    log = tmp_path / "celery.log"
    worker = start_celery_worker(database_url, redis_url, log)
    try:
        for created in (first, second):
            try:
                ready = await wait_for_status(
                    client, alice, created.json()["id"], "ready", "failed"
                )
            except AssertionError:
                raise AssertionError(log.read_text()[-4000:]) from None
            assert ready["status"] == "ready", ready["error"]
            chunks = await chunk_rows(app, created.json()["id"])
            assert [c["ordinal"] for c in chunks] == list(range(ready["chunk_count"]))
            # The document is ready when its chunks are; the job is marked done just after.
            job_url = f"/jobs/{created.json()['job_id']}"

            async def finished(url: str = job_url) -> bool:
                job = await client.get(url, headers=alice.headers)
                return bool(job.json()["state"] != "running")

            await wait_until(finished, within_s=30, interval=0.1)
            job = await client.get(job_url, headers=alice.headers)
            assert (job.json()["state"], job.json()["attempts"]) == ("succeeded", 1)
        assert app.state.dispatcher.sent >= 2
        # A duplicate message for a finished job changes nothing (the claim finds no work).
        app.state.dispatcher._send(uuid.UUID(first.json()["job_id"]))
        await asyncio.sleep(2)
        again = await client.get(f"/jobs/{first.json()['job_id']}", headers=alice.headers)
        assert (again.json()["state"], again.json()["attempts"]) == ("succeeded", 1)
        assert "mainsail.run_job" in log.read_text()  # the worker did receive the tasks
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
