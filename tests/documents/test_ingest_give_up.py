"""The ingestion job after crashes and transient errors: what the document says when the
job gives up."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.documents import repository as documents_repository
from mainsail.documents.pipeline import Ingestor
from mainsail.jobs import repository as jobs_repository
from mainsail.jobs.service import JobContext
from mainsail.settings import Settings
from mainsail.worker import build_runner
from tests.documents.conftest import Upload, chunk_rows, essay
from tests.fixtures.app import make_settings
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL) -> Settings:
    # The app runs no jobs itself (the tests drive a runner); two attempts, no backoff.
    return make_settings(
        database_url,
        jobs={"executor": "external", "max_attempts": 2, "backoff_base_s": 0, "backoff_max_s": 0},
    )


async def test_a_transient_error_before_the_pipeline_on_the_last_attempt_fails_the_document(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transient error before the pipeline starts (looking up the owner, the index
    versions: the database or identity briefly away) on every attempt: the job ends dead and
    the document fails with it, instead of staying ``processing`` for ever (which made the
    same bytes uploaded again answer with the stuck document instead of retrying it)."""

    async def owner_away(self: Ingestor, owner_id: uuid.UUID, job: JobContext) -> None:
        raise ConnectionError("identity lookup failed")

    monkeypatch.setattr(Ingestor, "owner_context", owner_away)
    body = essay(3).encode()
    created = await upload(alice, body, "stuck.txt")
    assert created.status_code == 202
    document_id, job_id = created.json()["id"], created.json()["job_id"]
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    assert await runner.run_one()
    job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert (job["state"], job["attempts"]) == ("dead", 2)
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert document["status"] == "failed", document
    again = await upload(alice, body, "stuck.txt")
    assert again.status_code == 202  # the owner's retry: a new revision and job


async def test_a_revision_activated_before_its_worker_died_stays_ready_when_the_job_gives_up(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, settings: Settings
) -> None:
    """Attempt 1 activates the revision and its worker dies before finishing the job;
    attempt 2 re-claims it and must leave the ready document ready (it once turned it back
    to ``processing``); when that worker dies too, giving up must not mark the document
    ``failed``: its revision is active, every chunk searchable."""
    created = await upload(alice, essay(2).encode(), "done.txt")
    document_id = uuid.UUID(created.json()["id"])
    job_id = created.json()["job_id"]
    ingestor = app.state.documents.ingestor
    async with app.state.db.autocommit() as connection:
        row = await jobs_repository.claim(connection, worker="w1", lease_s=0.3)
    assert row is not None
    await ingestor(JobContext.claimed(row, db=app.state.db, worker="w1"))  # then w1 dies
    ready = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert ready["status"] == "ready"
    assert ready["chunk_count"] > 0
    await asyncio.sleep(0.4)  # w1's lease lapses
    async with app.state.db.autocommit() as connection:  # w2 takes it, starts, dies
        row = await jobs_repository.claim(connection, worker="w2", lease_s=0.3)
    assert row is not None
    assert row["attempts"] == 2
    async with app.state.db.unit_of_work() as session:
        await documents_repository.claim_for_ingest(session, document_id, 1)
    await asyncio.sleep(0.4)
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()  # attempt 3 > 2: dead, and the kind gives up
    job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert job["state"] == "dead"
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert len(await chunk_rows(app, str(document_id))) == document["chunk_count"] > 0
    assert (document["status"], document["error"]) == ("ready", None)


async def test_handler_cancelled_error_on_last_attempt_fails_the_document_too(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner ends a job whose handler raised CancelledError of its own (nobody
    cancelled the lane) retrying, then dead; the document fails with it instead of staying
    "processing" for ever."""

    async def cancelled(self: Ingestor, owner_id: uuid.UUID, job: JobContext) -> None:
        raise asyncio.CancelledError  # e.g. an awaited inner task cancelled by someone else

    monkeypatch.setattr(Ingestor, "owner_context", cancelled)
    created = await upload(alice, essay(3).encode(), "cancelled.txt")
    assert created.status_code == 202
    document_id, job_id = created.json()["id"], created.json()["job_id"]
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    assert await runner.run_one()
    job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert job["state"] == "dead"
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert document["status"] == "failed", document
