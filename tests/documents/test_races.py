"""Uploads and deletes that meet a running job or each other."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, chunk_rows, essay
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.database import asyncpg_dsn
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL) -> Settings:
    # Small embedder calls, so a long document is stored in many steps.
    return make_settings(database_url, jobs=QUICK_JOBS, documents={"embed_window": 16})


async def test_deleting_a_document_while_it_is_ingested_stops_its_job_cleanly(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await client.post("/documents", json={"text": essay(400)}, headers=alice.headers)
    assert created.status_code == 202
    document_id, job_id = created.json()["id"], created.json()["job_id"]

    async def some_chunks_stored() -> bool:
        return bool(await chunk_rows(app, document_id))

    await wait_until(some_chunks_stored, within_s=60, interval=0.01)
    running = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert running["state"] == "running"  # the race this test is about
    deleted = await client.delete(f"/documents/{document_id}", headers=alice.headers)
    assert deleted.status_code == 204
    job: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal job
        job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
        return job["state"] in ("succeeded", "failed", "dead")

    await wait_until(settled, within_s=60, interval=0.05)
    # Not a failure to retry, and nothing written after the delete.
    assert (job["state"], job["attempts"], job["last_error"]) == ("succeeded", 1, None)
    assert await chunk_rows(app, document_id) == []


async def test_the_same_bytes_uploaded_twice_at_once_make_one_document(
    client: httpx.AsyncClient, alice: Account
) -> None:
    body = {"text": essay(3), "collection": "twice"}
    answers = await asyncio.gather(
        *[client.post("/documents", json=body, headers=alice.headers) for _ in range(3)]
    )
    assert sorted(a.status_code for a in answers) == [200, 200, 202]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.json()["job_id"] for a in answers}) == 1
    listed = await client.get("/documents", params={"collection": "twice"}, headers=alice.headers)
    assert listed.json()["total"] == 1


async def test_the_same_bytes_uploaded_while_their_document_is_deleted_make_a_new_one(
    client: httpx.AsyncClient, database_url: URL, alice: Account
) -> None:
    body = {"text": essay(3), "collection": "again"}
    first = await client.post("/documents", json=body, headers=alice.headers)
    assert first.status_code == 202
    deleting = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = deleting.transaction()
        await transaction.start()
        await deleting.execute("DELETE FROM documents WHERE id = $1", uuid.UUID(first.json()["id"]))
        upload = asyncio.create_task(client.post("/documents", json=body, headers=alice.headers))
        await asyncio.sleep(0.5)  # the upload finds the row and waits for the delete
        assert not upload.done()
        await transaction.commit()
        again = await upload
    finally:
        await deleting.close()
    assert again.status_code == 202, again.text  # a new document, not the deleted one
    assert again.json()["id"] != first.json()["id"]


async def test_the_same_bytes_uploaded_while_their_document_is_updated_are_answered_at_once(
    client: httpx.AsyncClient, database_url: URL, alice: Account
) -> None:
    """The same-bytes lookup waits for a delete of the document only: a transaction updating
    it (its ingestion storing a status) does not hold the upload until it ends."""
    body = {"text": essay(3), "collection": "updated"}
    first = await client.post("/documents", json=body, headers=alice.headers)
    assert first.status_code == 202
    updating = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = updating.transaction()
        await transaction.start()
        await updating.execute(
            "UPDATE documents SET status = status WHERE id = $1", uuid.UUID(first.json()["id"])
        )
        again = await asyncio.wait_for(
            client.post("/documents", json=body, headers=alice.headers), 10
        )
        await transaction.rollback()
    finally:
        await updating.close()
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
