"""What goes wrong with uploads and jobs: oversized bodies, binary posing as text, and a
poisoned job that ends in the dead-letter list and is re-queued once fixed."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

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
