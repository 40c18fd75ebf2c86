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


async def test_bad_multipart_metadata_is_a_422_even_nested_beyond_the_parser(
    alice: Account, upload: Upload, app: FastAPI
) -> None:
    deep = "[" * 20_000 + "]" * 20_000
    nested = "[" * 300 + "]" * 300  # parses, but deeper than anything metadata needs
    for metadata in ('{"a": ' + deep + "}", '{"a": ' + nested + "}", "[1, 2]", "{not json"):
        answer = await upload(alice, b"Some text here.", "a.txt", metadata=metadata)
        assert answer.status_code == 422  # as the same field in a JSON body
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "metadata" in answer.json()["detail"]
    assert staged(app) == []


async def test_multipart_metadata_with_a_lone_surrogate_is_a_422(
    alice: Account, upload: Upload, app: FastAPI
) -> None:
    """JSON may spell a lone surrogate, which is no character and which PostgreSQL refuses."""
    for metadata in ('{"k": "\\udfff"}', '{"\\ud800": 1}', '{"k": ["ok", {"n": "\\ud800"}]}'):
        answer = await upload(alice, b"Some text here.", "a.txt", metadata=metadata)
        assert answer.status_code == 422, answer.text
        assert "surrogate" in answer.json()["detail"]
    assert staged(app) == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_metadata_with_nan_or_infinity_is_refused_in_either_body(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, number: str
) -> None:
    """JSON has neither, but parsers take them (1e999 as infinity); jsonb refuses them."""
    as_json = await client.post(
        "/documents",
        content=f'{{"text": "Some text here.", "metadata": {{"a": [{number}]}}}}'.encode(),
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert as_json.status_code == 422, as_json.text
    assert "NaN or Infinity" in as_json.text
    as_form = await client.post(
        "/documents",
        files={"file": ("n.txt", b"Some text here.", "text/plain")},
        data={"metadata": f'{{"a": {{"b": {number}}}}}'},
        headers=alice.headers,
    )
    assert as_form.status_code == 422, as_form.text
    assert "NaN or Infinity" in as_form.json()["detail"]
    assert staged(app) == []


@pytest.mark.parametrize(
    "disposition",
    [b"filename*=unicode_escape''a%5Cudfffb.txt", b"filename*=raw_unicode_escape''a%5Cud800.txt"],
)
async def test_a_filename_decoded_into_a_lone_surrogate_is_a_422(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, disposition: bytes
) -> None:
    """An RFC 2231 ``filename*`` is decoded with whatever codec it names."""
    body = (
        b'--x\r\nContent-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\n\r\nhello\r\n--x--\r\n"
    )
    answer = await client.post(
        "/documents",
        content=body,
        headers={**alice.headers, "content-type": "multipart/form-data; boundary=x"},
    )
    assert answer.status_code == 422, answer.text
    assert "filename" in answer.json()["detail"]
    assert staged(app) == []


@pytest.mark.parametrize("boundary", ["b" * 300, "b" * 201])
async def test_an_over_long_multipart_boundary_is_a_400(
    client: httpx.AsyncClient, alice: Account, boundary: str
) -> None:
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        f"hello long boundary\r\n--{boundary}--\r\n"
    ).encode()
    answer = await client.post(
        "/documents",
        content=body,
        headers={**alice.headers, "content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == 400, answer.text
    assert "boundary" in answer.json()["detail"]


@pytest.mark.parametrize("size", ["6_4", "\u0666\u0664", "64.0", "+64"])
async def test_a_form_chunk_size_must_be_ascii_digits(
    alice: Account, upload: Upload, size: str
) -> None:
    """``int()`` also reads "6_4" and Arabic-Indic digits."""
    answer = await upload(alice, b"Some text here.", "a.txt", chunk_size=size)
    assert answer.status_code == 422, answer.text
    fine = await upload(alice, b"Some text here.", "a.txt", chunk_size=" 64 ")
    assert fine.status_code == 202, fine.text


@pytest.mark.parametrize(
    "tail",
    [
        # Cut inside the file: the document would be stored truncated.
        "",
        # Cut in a field after the file: the field would be lost (the default collection).
        '\r\n--b0undary\r\nContent-Disposition: form-data; name="collection"\r\n\r\nnotes',
        # Cut inside the closing boundary itself.
        "\r\n--b0undary-",
    ],
    ids=["in-the-file", "in-a-field-after-it", "in-the-closing-boundary"],
)
async def test_a_multipart_body_without_its_closing_boundary_is_refused(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, tail: str
) -> None:
    """A client or a proxy cut the body short: refused, not ingested as a whole document."""
    body = (
        "--b0undary\r\n"
        'Content-Disposition: form-data; name="file"; filename="cut.txt"\r\n\r\n'
        "The first half of a document that the client never finished sending" + tail
    ).encode()
    headers = {**alice.headers, "content-type": "multipart/form-data; boundary=b0undary"}
    answer = await client.post("/documents", content=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert "closing boundary" in answer.json()["detail"]
    assert staged(app) == []
    whole = await client.post("/documents", content=body + b"\r\n--b0undary--\r\n", headers=headers)
    assert whole.status_code == 202, whole.text


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
