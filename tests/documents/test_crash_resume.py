"""A worker process killed mid-ingestion (SIGKILL, no chance to clean up): the job's lease
lapses, another worker takes it, resumes after the last stored batch, and the document ends
with every chunk exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from mainsail.worker import build_runner
from tests.documents.conftest import Upload, chunk_rows, essay, wait_for_status, worker_env
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.identity import Account

LEASE_S = 2.0


@pytest.fixture
def settings(database_url: URL) -> Settings:
    # The app runs no jobs itself: the worker processes below do.
    return make_settings(
        database_url, jobs={"executor": "external", "lease_s": LEASE_S, "poll_interval_s": 0.2}
    )


def start_worker(database_url: URL, log: Path) -> subprocess.Popen[bytes]:
    env = worker_env(
        database_url,
        JOBS__LEASE_S=str(LEASE_S),
        JOBS__POLL_INTERVAL_S="0.2",
        LOG__LEVEL="WARNING",
        # Small windows, so that it stores several before it is killed.
        DOCUMENTS__EMBED_WINDOW="32",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "mainsail", "worker", "--no-migrate"],
        env=env,
        cwd=Path(__file__).parent,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def stored(app: FastAPI, document_id: str) -> int:
    async with app.state.db.engine.connect() as connection:
        count = await connection.scalar(
            text("SELECT count(*) FROM chunks WHERE document_id = :id"), {"id": document_id}
        )
    return int(count or 0)


async def test_a_killed_worker_s_job_resumes_without_duplicates(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    database_url: URL,
    settings: Settings,
    tmp_path: Path,
) -> None:
    created = await upload(alice, essay(160).encode(), "long.txt", chunk_size="48")
    assert created.status_code == 202
    document_id = created.json()["id"]
    log = tmp_path / "worker.log"
    worker = start_worker(database_url, log)
    try:

        async def some_stored() -> bool:
            assert worker.poll() is None, log.read_text()
            return await stored(app, document_id) >= 64

        await wait_until(some_stored, within_s=90, interval=0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    before = await stored(app, document_id)
    async with app.state.db.engine.connect() as connection:
        job = (
            await connection.execute(
                text("SELECT state, attempts FROM jobs WHERE id = :id"),
                {"id": created.json()["job_id"]},
            )
        ).one()
    assert tuple(job) == ("running", 1)  # nobody told the table: only the lease says it's over

    runner = await build_runner(settings, app.state.db)
    started = time.monotonic()

    async def taken() -> bool:
        return await runner.run_one()

    await wait_until(taken, within_s=LEASE_S + 5, interval=0.2)
    assert time.monotonic() - started >= 0  # taken once the lease lapsed
    ready = await wait_for_status(client, alice, document_id, "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    chunks = await chunk_rows(app, document_id)
    assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    assert ready["chunk_count"] == len(chunks) > before
    job_now = await client.get(f"/jobs/{created.json()['job_id']}", headers=alice.headers)
    assert job_now.json()["attempts"] == 2
    # The second run embedded only what the first had not stored.
    assert job_now.json()["progress"]["embedded"] == len(chunks) - before
