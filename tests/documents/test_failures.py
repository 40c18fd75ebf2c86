"""What goes wrong with uploads and jobs: oversized bodies, binary posing as text, and a
poisoned job that ends in the dead-letter list and is re-queued once fixed."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.documents import repository as documents_repository
from mainsail.jobs import repository as jobs_repository
from mainsail.jobs.service import JobContext
from mainsail.settings import Settings
from mainsail.worker import build_runner
from tests.documents.conftest import Upload, chunk_rows, essay, wait_for_status
from tests.fixtures.app import make_settings
from tests.fixtures.identity import Account

LIMIT = 4096


@pytest.fixture
def settings(database_url: URL) -> Settings:
    # Small uploads; the app runs no jobs itself (the tests drive a runner); two attempts.
    return make_settings(
        database_url,
        documents={"max_upload_bytes": LIMIT},
        jobs={"executor": "external", "max_attempts": 2, "backoff_base_s": 0, "backoff_max_s": 0},
    )


def staged(app: FastAPI) -> list[str]:
    staging = app.state.documents.store.staging
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


async def test_a_declared_oversized_upload_is_refused_before_reading(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(256):
            sent += 1
            yield b"x" * 1024

    boundary = "b0undary"
    refused = await client.post(
        "/documents",
        content=body(),
        headers={
            **alice.headers,
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(256 * 1024),
        },
    )
    assert refused.status_code == 413
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert sent < 256  # refused on the header, not after the whole body
    assert staged(app) == []


async def test_a_streamed_upload_is_cut_off_at_the_limit(
    app: FastAPI, alice: Account, upload: Upload
) -> None:
    refused = await upload(alice, b"word " * (LIMIT // 2), "big.txt")
    assert refused.status_code == 413
    assert "MAX_UPLOAD_BYTES" in refused.text or "too large" in refused.text.lower()
    assert staged(app) == []
    fine = await upload(alice, b"A small file.", "small.txt")
    assert fine.status_code == 202


async def test_a_poisoned_job_ends_dead_then_runs_again_when_requeued(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    upload: Upload,
    settings: Settings,
) -> None:
    created = await upload(alice, essay(4).encode(), "poison.txt")
    assert created.status_code == 202
    document_id, job_id = created.json()["id"], created.json()["job_id"]
    stored = app.state.documents.store.path(document_id, 1)
    kept = stored.with_suffix(".kept")
    shutil.move(stored, kept)
    stored.mkdir()  # reading it now fails with an OS error every time: not the file's fault
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    assert (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()["state"] == (
        "retrying"
    )
    assert await runner.run_one()
    dead = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert (dead["state"], dead["attempts"]) == ("dead", 2)
    assert "IsADirectoryError" in dead["last_error"]
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert document["status"] == "failed"
    assert "2 attempts" in document["error"]
    listed = await client.get("/admin/jobs", params={"state": "dead"}, headers=admin.headers)
    assert [job["id"] for job in listed.json()["items"]] == [job_id]

    stored.rmdir()
    shutil.move(kept, stored)
    requeued = await client.post(f"/admin/jobs/{job_id}/requeue", headers=admin.headers)
    assert requeued.status_code == 200
    assert await runner.run_one()
    ready = await wait_for_status(client, alice, document_id, "ready", "failed")
    assert ready["status"] == "ready"
    assert len(await chunk_rows(app, document_id)) == ready["chunk_count"] > 0


async def test_a_job_whose_worker_dies_on_every_attempt_fails_its_document(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, settings: Settings
) -> None:
    """The last attempt's worker is killed too: the job ends dead without its handler running
    again, and the document must not stay ``processing`` (re-uploading retries it)."""
    body = essay(4).encode()
    created = await upload(alice, body, "doomed.txt")
    document_id, job_id = created.json()["id"], created.json()["job_id"]
    for attempt in (1, 2):  # claimed, marked processing, then the worker vanishes
        async with app.state.db.autocommit() as connection:
            row = await jobs_repository.claim(connection, worker=f"doomed-{attempt}", lease_s=0.1)
            assert row is not None
            assert row["attempts"] == attempt
        async with app.state.db.unit_of_work() as session:
            claimed = await documents_repository.claim_for_ingest(
                session, uuid.UUID(document_id), 1
            )
            assert claimed is not None
        await asyncio.sleep(0.2)  # the lease lapses
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    job = (await client.get(f"/jobs/{job_id}", headers=alice.headers)).json()
    assert (job["state"], job["attempts"]) == ("dead", 3)
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert document["status"] == "failed"
    assert "gave up after 2 attempts" in document["error"]

    again = await upload(alice, body, "doomed.txt")
    assert again.status_code == 202  # a retry: a new revision and a new job
    assert (again.json()["revision"], again.json()["status"]) == (2, "queued")
    assert again.json()["job_id"] != job_id


async def test_a_dead_job_leaves_a_ready_revision_ready(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, settings: Settings
) -> None:
    """Its worker died after the revision was activated: giving up does not undo that."""
    created = await upload(alice, essay(2).encode(), "done.txt")
    document_id = uuid.UUID(created.json()["id"])
    runner = await build_runner(settings, app.state.db)
    ingestor = app.state.documents.ingestor
    async with app.state.db.autocommit() as connection:
        row = await jobs_repository.claim(connection, worker="w", lease_s=60)
    assert row is not None
    ctx = JobContext.claimed(row, db=app.state.db, worker="w")
    await ingestor(ctx)
    await runner.give_ups["ingest"](ctx, "worker gone")
    document = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()
    assert (document["status"], document["error"]) == ("ready", None)


async def test_blank_documents_are_refused_or_fail_with_a_reason(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload, settings: Settings
) -> None:
    inline = await client.post("/documents", json={"text": " \n\t \n"}, headers=alice.headers)
    assert inline.status_code == 422
    assert "blank" in inline.text
    created = await upload(alice, b" \r\n\t \n\n   \r\n", "blank.txt")
    assert created.status_code == 202  # a file: read by the job
    runner = await build_runner(settings, app.state.db)
    assert await runner.run_one()
    failed = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert failed["status"] == "failed"
    assert failed["error"] == "No text could be extracted from the document."
    job = (await client.get(f"/jobs/{created.json()['job_id']}", headers=alice.headers)).json()
    assert (job["state"], job["attempts"]) == ("failed", 1)  # permanent: not retried


async def test_a_long_multipart_filename_is_a_422_and_nothing_stays_staged(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    as_part = await upload(alice, b"Some text here.", "x" * 600 + ".txt")
    as_field = await client.post(
        "/documents",
        files={"file": ("a.txt", b"Other text here.")},
        data={"filename": "y" * 513},
        headers=alice.headers,
    )
    for answer in (as_part, as_field):
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "filename" in answer.json()["detail"]
    assert staged(app) == []
    longest = await upload(alice, b"Third text here.", "z" * 508 + ".txt")
    assert longest.status_code == 202


async def test_bad_multipart_metadata_is_a_400_even_nested_beyond_the_parser(
    alice: Account, upload: Upload, app: FastAPI
) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    nested = "[" * 300 + "]" * 300  # parses, but deeper than anything metadata needs
    for metadata in ('{"a": ' + deep + "}", '{"a": ' + nested + "}", "[1, 2]", "{not json"):
        answer = await upload(alice, b"Some text here.", "a.txt", metadata=metadata)
        assert answer.status_code == 400
        assert "metadata" in answer.json()["detail"]
    assert staged(app) == []


async def test_a_chunked_multipart_body_over_the_limit_is_a_413(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    """The file is under the limit, but the form's other fields push the body (sent without
    a Content-Length) past the limit on the whole request."""
    boundary = "b0undary"
    parts = [
        ("metadata", None, b'{"k": "' + b"v" * 60_000 + b'"}'),
        ("collection", None, b"c" * 6_000),
        ("file", "a.txt", b"word " * 800),
    ]
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    answer = await client.post(
        "/documents",
        content=chunks(),
        headers={**alice.headers, "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert staged(app) == []
