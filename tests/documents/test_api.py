"""POST/GET/DELETE /documents end to end: the upload is stored, a job parses, chunks and
embeds it with the real local model, and the chunks land in PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.documents.conftest import FIXTURES, Upload, chunk_rows, essay, wait_for_status
from tests.documents.fixtures.make_fixtures import pdf_bytes
from tests.fixtures.app import wait_until
from tests.fixtures.identity import Account
from tests.search.test_index_versions import wait_for_job


async def test_an_upload_is_ingested_into_embedded_chunks(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    body = essay(30).encode()
    created = await upload(
        alice, body, "voyage.txt", collection="logbook", metadata='{"ship": "A"}'
    )
    assert created.status_code == 202, created.text
    document = created.json()
    assert (document["status"], document["collection"], document["filename"]) == (
        "queued",
        "logbook",
        "voyage.txt",
    )
    assert document["content_type"] == "text/plain"
    assert document["size_bytes"] == len(body)
    assert document["sha256"] == hashlib.sha256(body).hexdigest()
    assert document["metadata"] == {"ship": "A"}
    ready = await wait_for_status(client, alice, document["id"], "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    assert ready["active_revision"] == 1
    chunks = await chunk_rows(app, document["id"])
    assert ready["chunk_count"] == len(chunks) > 3
    assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    assert {c["dims"] for c in chunks} == {384}
    assert max(c["token_count"] for c in chunks) <= 200  # the default chunk size, in tokens
    # Offsets point into the document's text (paragraphs joined by a blank line).
    source = body.decode()
    for chunk in chunks:
        assert source[chunk["char_start"] : chunk["char_end"]] == chunk["text"]
    # Each stored vector is the model's for the chunk's text (the pipeline hands the embedder
    # the chunker's word pieces instead of the text: they must read the same). The document
    # is one batch (int8 vectors depend a little on the texts run with them).
    assert len(chunks) <= 256 // 8
    kit = app.state.documents
    name = kit.ingestor.first_version.embedder
    expected = await kit.embedders.embed(name, [c["text"] for c in chunks], ctx=None)
    async with app.state.db.engine.connect() as connection:
        stored = await connection.scalars(
            text("SELECT embedding::text FROM chunks WHERE document_id = :id ORDER BY ordinal"),
            {"id": document["id"]},
        )
        vectors = np.array([json.loads(v) for v in stored], dtype=np.float32)
    assert np.allclose(vectors, expected, atol=1e-6)
    # The document is ready when its chunks are committed; the job finishes just after.
    job: dict[str, Any] = {}

    async def job_done() -> bool:
        nonlocal job
        job = (await client.get(f"/jobs/{document['job_id']}", headers=alice.headers)).json()
        return bool(job["state"] == "succeeded")

    await wait_until(job_done, within_s=10)
    assert job["progress"]["chunks"] == len(chunks)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("sample.txt", "text/plain"),
        ("sample.md", "text/markdown"),
        ("sample.html", "text/html"),
        ("sample.pdf", "application/pdf"),
        ("sample.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ],
)
async def test_each_format_is_ingested(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    name: str,
    content_type: str,
) -> None:
    # The client's content type is ignored: the bytes decide.
    created = await upload(alice, (FIXTURES / name).read_bytes(), name, "application/x-anything")
    assert created.status_code == 202, created.text
    assert created.json()["content_type"] == content_type
    ready = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    chunks = await chunk_rows(app, created.json()["id"])
    assert chunks
    if name == "sample.pdf":
        assert all(c["page"] is not None for c in chunks)
    if name in ("sample.md", "sample.html", "sample.docx"):
        assert any(c["heading"] for c in chunks)


async def test_inline_text_is_a_document_too(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await client.post(
        "/documents",
        json={"text": "# Title\n\n" + essay(3), "filename": "inline.md", "metadata": {"k": 1}},
        headers=alice.headers,
    )
    assert created.status_code == 202, created.text
    assert created.json()["content_type"] == "text/markdown"
    ready = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert ready["status"] == "ready"
    assert ready["chunk_count"] >= 1


async def test_null_metadata_is_none_in_either_body(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    as_json = await client.post(
        "/documents",
        json={"text": essay(1), "filename": "n.md", "metadata": None, "collection": None},
        headers=alice.headers,
    )
    assert as_json.status_code == 202, as_json.text
    assert as_json.json()["metadata"] == {}
    as_form = await client.post(
        "/documents",
        files={"file": ("n.txt", essay(2).encode(), "text/plain")},
        data={"metadata": "null"},
        headers=alice.headers,
    )
    assert as_form.status_code == 202, as_form.text
    assert as_form.json()["metadata"] == {}
    await wait_for_status(client, alice, as_form.json()["id"], "ready", "failed")
    await wait_for_status(client, alice, as_json.json()["id"], "ready", "failed")


async def test_inline_text_holding_nul_is_a_422_naming_the_text(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await client.post(
        "/documents", json={"text": "a line\u0000 and more"}, headers=alice.headers
    )
    assert created.status_code == 422, created.text
    assert [error["field"] for error in created.json()["errors"]] == ["text"]
    assert "NUL" in created.text


async def test_a_decomposed_filename_names_the_same_document_as_a_composed_one(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    """macOS spells "é" as "e" and a combining accent; the name is kept composed (NFC), so
    the changed file is a revision, not a second document."""
    composed, decomposed = "r\u00e9sum\u00e9.txt", "re\u0301sume\u0301.txt"
    first = await upload(alice, essay(3).encode(), composed)
    assert first.status_code == 202, first.text
    second = await upload(alice, essay(4, seed=2).encode(), decomposed)
    assert second.status_code == 202, second.text
    assert second.json()["id"] == first.json()["id"]
    assert (second.json()["revision"], second.json()["filename"]) == (2, composed)
    inline = await client.post(
        "/documents", json={"text": essay(5, seed=4), "filename": decomposed}, headers=alice.headers
    )
    assert inline.status_code == 202, inline.text
    assert (inline.json()["id"], inline.json()["revision"]) == (first.json()["id"], 3)


async def test_the_same_bytes_return_the_existing_document_without_a_new_job(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account, upload: Upload
) -> None:
    body = essay(4).encode()
    first = await upload(alice, body, "a.txt")
    again = await upload(alice, body, "renamed.txt")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["job_id"] == first.json()["job_id"]
    other_owner = await upload(bob, body, "a.txt")
    assert other_owner.status_code == 202
    other_collection = await upload(alice, body, "a.txt", collection="elsewhere")
    assert other_collection.status_code == 202
    async with app.state.db.engine.connect() as connection:
        jobs = await connection.scalar(text("SELECT count(*) FROM jobs"))
    assert jobs == 3


async def test_a_changed_file_makes_a_revision_that_replaces_the_chunks(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    first = await upload(alice, essay(6).encode(), "report.txt")
    await wait_for_status(client, alice, first.json()["id"], "ready")
    before = await chunk_rows(app, first.json()["id"])
    second = await upload(alice, essay(9, seed=3).encode(), "report.txt")
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["revision"] == 2
    assert second.json()["active_revision"] == 1  # search keeps reading revision 1 meanwhile
    ready = await wait_for_status(client, alice, first.json()["id"], "ready")
    assert ready["active_revision"] == 2
    after = await chunk_rows(app, first.json()["id"])
    assert {c["revision"] for c in after} == {2}
    assert [c["text"] for c in after] != [c["text"] for c in before]
    folder = app.state.documents.store.root / first.json()["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["2"]  # the old original is gone


async def test_chunk_size_and_overlap_are_honoured_in_tokens(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    body = essay(12).encode()
    small = await upload(alice, body, "small.txt", chunk_size="40", chunk_overlap="10")
    assert small.status_code == 202, small.text
    assert small.json()["chunking"] == {"chunk_size": 40, "chunk_overlap": 10}
    await wait_for_status(client, alice, small.json()["id"], "ready")
    chunks = await chunk_rows(app, small.json()["id"])
    assert max(c["token_count"] for c in chunks) <= 40
    # Neighbours inside a paragraph overlap: a chunk starts before the previous one ends.
    overlaps = [b["char_start"] < a["char_end"] for a, b in itertools.pairwise(chunks)]
    assert any(overlaps)
    default = await upload(alice, body + b"\n\nOne more line.", "default.txt")
    await wait_for_status(client, alice, default.json()["id"], "ready")
    assert len(chunks) > len(await chunk_rows(app, default.json()["id"]))


async def test_a_chunk_size_alone_takes_the_default_overlap_up_to_a_quarter(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    """As for an index version: the default overlap (30), at most a quarter of the size."""
    small = await upload(alice, essay(2).encode(), "quarter.txt", chunk_size="40")
    assert small.status_code == 202, small.text
    assert small.json()["chunking"] == {"chunk_size": 40, "chunk_overlap": 10}
    inline = await client.post(
        "/documents",
        json={"text": essay(3), "filename": "inline.txt", "chunking": {"chunk_size": 200}},
        headers=alice.headers,
    )
    assert inline.status_code == 202, inline.text
    assert inline.json()["chunking"] == {"chunk_size": 200, "chunk_overlap": 30}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"chunk_size": "20", "chunk_overlap": "20"}, "chunk_overlap"),
        ({"chunk_size": "1000"}, "at most"),
        ({"chunk_size": "ten"}, "chunk_size"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"collection": "bad/name"}, "collection"),
    ],
)
async def test_bad_options_are_refused_before_anything_is_stored(
    app: FastAPI, alice: Account, upload: Upload, fields: dict[str, str], problem: str
) -> None:
    refused = await upload(alice, b"Some text.", "x.txt", **fields)
    assert refused.status_code in (400, 422)
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert problem in refused.text
    staging = app.state.documents.store.staging
    assert not any(staging.iterdir()) if staging.exists() else True


@pytest.mark.parametrize(
    ("content", "filename"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "picture.txt"),
        (b"MZ\x90\x00" + bytes(range(256)) * 4, "report.pdf"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 64, "archive.md"),
    ],
    ids=["png", "exe", "gzip"],
)
async def test_unsupported_types_are_415_whatever_the_name(
    alice: Account, upload: Upload, content: bytes, filename: str
) -> None:
    refused = await upload(alice, content, filename, "text/plain")
    assert refused.status_code == 415
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_malformed_requests_get_clear_errors(
    client: httpx.AsyncClient, alice: Account
) -> None:
    no_file = await client.post(
        "/documents", data={"collection": "x"}, files={"other": ("a", b"1")}, headers=alice.headers
    )
    assert no_file.status_code == 400
    assert "'file'" in no_file.text
    wrong_type = await client.post(
        "/documents", content=b"hello", headers={**alice.headers, "content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    empty_json = await client.post("/documents", json={"text": ""}, headers=alice.headers)
    assert empty_json.status_code == 422
    unknown_field = await client.post(
        "/documents", json={"text": "hi", "color": "red"}, headers=alice.headers
    )
    assert unknown_field.status_code == 422


async def test_a_corrupt_file_fails_with_a_reason_and_the_next_one_still_works(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    broken = (FIXTURES / "sample.pdf").read_bytes()[:600]
    created = await upload(alice, broken, "broken.pdf")
    assert created.status_code == 202
    failed = await wait_for_status(client, alice, created.json()["id"], "failed", "ready")
    assert failed["status"] == "failed"
    assert failed["error"]
    assert "Traceback" not in failed["error"]
    # The document fails first, then its job: wait for the job's end.
    job = await wait_for_job(client, alice, created.json()["job_id"])
    assert (job["state"], job["attempts"]) == ("failed", 1)  # not retried
    fine = await upload(alice, essay(2).encode(), "fine.txt")
    assert (await wait_for_status(client, alice, fine.json()["id"], "ready"))["status"] == "ready"


async def test_an_unreadable_file_fails_once_with_a_readable_reason(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    """A PDF whose streams use a filter no reader knows: reading the same bytes again fails the
    same way, so one attempt, not a round of retries, and a reason fit for the uploader."""
    data = pdf_bytes([["Hello page one"]], compress=False).replace(
        b"<< /Length", b"<< /Filter /FooDecode /Length"
    )
    created = await upload(alice, data, "odd.pdf")
    assert created.status_code == 202, created.text
    done = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert done["status"] == "failed", done
    assert done["error"] == "The PDF is damaged and cannot be read.", done["error"]
    job = (await client.get(f"/jobs/{created.json()['job_id']}", headers=alice.headers)).json()
    assert (job["state"], job["attempts"]) == ("failed", 1), job


async def test_a_legacy_encoded_html_page_naming_its_charset_is_ingested(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    japanese = (
        "これは日本語の文章です。漢字とひらがなとカタカナが含まれています。検索のための文書。"
    )
    page = (
        '<html><head><meta charset="shift_jis"><title>t</title></head><body><p>'
        + japanese * 20
        + "</p></body></html>"
    ).encode("shift_jis")
    created = await upload(alice, page, "page.html", "text/html")
    assert created.status_code == 202, created.text
    assert created.json()["content_type"] == "text/html"
    done = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert done["status"] == "ready", done


async def test_the_same_bytes_after_a_failure_are_a_retry(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    broken = (FIXTURES / "sample.pdf").read_bytes()[:600]
    first = await upload(alice, broken, "broken.pdf")
    document = first.json()["id"]
    await wait_for_status(client, alice, document, "failed", "ready")
    # Uploaded again (under another name too): the same document, a new revision and job.
    again = await upload(alice, broken, "broken-again.pdf")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == document
    assert again.json()["revision"] == 2
    assert again.json()["job_id"] != first.json()["job_id"]
    failed = await wait_for_status(client, alice, document, "failed", "ready")
    assert failed["revision"] == 2
    assert failed["error"]
    listed = (await client.get("/documents", headers=alice.headers)).json()
    assert [item["id"] for item in listed["items"]] == [document]  # never a duplicate


async def test_listing_filters_and_pages(
    client: httpx.AsyncClient, alice: Account, bob: Account, upload: Upload
) -> None:
    ids = []
    for n in range(5):
        created = await upload(
            alice, essay(1, seed=n).encode(), f"{n}.txt", collection="c" + str(n % 2)
        )
        ids.append(created.json()["id"])
    await upload(bob, b"Bob's own words.", "bob.txt")
    everything = await client.get("/documents", params={"limit": 2}, headers=alice.headers)
    assert everything.json()["total"] == 5
    pages = []
    for offset in (0, 2, 4):
        page = await client.get(
            "/documents", params={"limit": 2, "offset": offset}, headers=alice.headers
        )
        pages += [item["id"] for item in page.json()["items"]]
    assert sorted(pages) == sorted(ids)  # no duplicates, no gaps
    assert len(pages) == len(set(pages)) == 5
    odd = await client.get("/documents", params={"collection": "c1"}, headers=alice.headers)
    assert {item["filename"] for item in odd.json()["items"]} == {"1.txt", "3.txt"}
    bad = await client.get("/documents", params={"status": "lost"}, headers=alice.headers)
    assert bad.status_code == 422


async def test_delete_removes_the_document_its_chunks_and_its_file(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    created = await upload(alice, essay(3).encode(), "gone.txt")
    document_id = created.json()["id"]
    await wait_for_status(client, alice, document_id, "ready")
    deleted = await client.delete(f"/documents/{document_id}", headers=alice.headers)
    assert deleted.status_code == 204
    assert (await client.get(f"/documents/{document_id}", headers=alice.headers)).status_code == 404
    assert await chunk_rows(app, document_id) == []
    assert not (app.state.documents.store.root / document_id).exists()
    again = await client.delete(f"/documents/{document_id}", headers=alice.headers)
    assert again.status_code == 404
    unknown = await client.get(f"/documents/{uuid.uuid4()}", headers=alice.headers)
    assert unknown.status_code == 404


async def test_binary_posing_as_text_is_refused_or_fails_with_a_reason(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    noise = bytes((i * 151 + 7) % 256 for i in range(3000))
    at_once = await upload(alice, noise, "notes.txt", "text/plain")
    assert at_once.status_code == 415  # the first bytes already say it is not text
    # Text for the first 20 kB, binary after: only reading the whole file finds out.
    disguised = ("Plain words. " * 2000).encode()[:20000] + noise
    later = await upload(alice, disguised, "later.txt", "text/plain")
    assert later.status_code == 202, later.text
    failed = await wait_for_status(client, alice, later.json()["id"], "failed", "ready")
    assert failed["status"] == "failed"
    assert "binary" in failed["error"].lower()


async def test_search_queries_have_a_one_thread_session_of_their_own(app: FastAPI) -> None:
    """Query vectors come from a session apart from the documents' (one thread by default),
    and read the same as the documents' session would give."""
    kit = app.state.documents
    name = kit.ingestor.first_version.embedder
    texts = ["where to anchor at night", "a sourdough starter", "telescope mirrors"]
    from_queries = await kit.embedders.embed(name, texts, ctx=None)
    documents_session = await asyncio.to_thread(kit.embedders, name)
    queries_session = await asyncio.to_thread(kit.embedders.for_queries, name)
    assert queries_session is not documents_session
    assert queries_session is kit.embedders.for_queries(name)  # loaded once
    assert kit.embedders.query_threads == 1
    assert np.allclose(from_queries, documents_session.embed(texts), atol=1e-6)
