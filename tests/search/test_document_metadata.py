"""PATCH /documents/{id}: a JSON merge patch of a document's metadata, which search, filters
and titles read at once, without a new revision; and what a re-upload does to metadata."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from tests.documents.conftest import wait_for_status
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import SAILING

START = {"title": "Old title", "year": 2020, "tags": {"a": 1, "b": 2}, "kept": "yes"}


async def patch(
    client: httpx.AsyncClient, account: Account, document_id: str, body: Any
) -> httpx.Response:
    return await client.patch(f"/documents/{document_id}", json=body, headers=account.headers)


async def test_a_merge_patch_changes_what_search_shows_at_once(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, ingest: Ingest, search: Search
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata=START)
    before = await client.get(f"/documents/{document_id}", headers=alice.headers)
    first = await search(alice, "anchor chain", filters={"metadata": {"year": 2020}})
    assert first.json()["results"][0]["title"] == "Old title"
    again = await search(alice, "anchor chain", filters={"metadata": {"year": 2020}})
    assert again.json()["cached"] is True

    changed = await patch(
        client,
        alice,
        document_id,
        {"metadata": {"title": "New title", "year": None, "tags": {"b": None, "c": [3]}}},
    )
    assert changed.status_code == 200, changed.text
    expected = {"title": "New title", "tags": {"a": 1, "c": [3]}, "kept": "yes"}
    assert changed.json()["metadata"] == expected
    read = await client.get(f"/documents/{document_id}", headers=alice.headers)
    assert read.json()["metadata"] == expected
    # No new revision, no ingestion: the same chunks, the same job.
    for field in ("revision", "active_revision", "job_id", "chunk_count", "status"):
        assert read.json()[field] == before.json()[field], field
    # The cached answer is not served: the removed key no longer matches, the title is new.
    gone = await search(alice, "anchor chain", filters={"metadata": {"year": 2020}})
    assert gone.json()["results"] == []
    titled = await search(alice, "anchor chain", filters={"metadata": {"title": "New title"}})
    assert titled.json()["results"]
    assert {hit["title"] for hit in titled.json()["results"]} == {"New title"}
    assert titled.json()["results"][0]["metadata"] == expected


async def test_null_metadata_empties_it_and_an_empty_patch_changes_nothing(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata=START)
    unchanged = await patch(client, alice, document_id, {})
    assert unchanged.status_code == 200
    assert unchanged.json()["metadata"] == START
    same = await patch(client, alice, document_id, {"metadata": {}})
    assert same.json()["metadata"] == START
    emptied = await patch(client, alice, document_id, {"metadata": None})
    assert emptied.status_code == 200
    assert emptied.json()["metadata"] == {}
    # The standard media type of a merge patch is taken as JSON.
    typed = await client.patch(
        f"/documents/{document_id}",
        content=b'{"metadata": {"title": "T"}}',
        headers={**alice.headers, "content-type": "application/merge-patch+json"},
    )
    assert typed.status_code == 200, typed.text
    assert typed.json()["metadata"] == {"title": "T"}


async def test_another_users_document_is_not_found_and_unchanged(
    client: httpx.AsyncClient, alice: Account, bob: Account, ingest: Ingest
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata=START)
    theirs = await patch(client, bob, document_id, {"metadata": {"title": "Mine"}})
    assert theirs.status_code == 404
    assert theirs.headers["content-type"].startswith("application/problem+json")
    missing = await patch(
        client, alice, "00000000-0000-0000-0000-000000000000", {"metadata": {"a": 1}}
    )
    assert missing.status_code == 404
    read = await client.get(f"/documents/{document_id}", headers=alice.headers)
    assert read.json()["metadata"] == START


async def test_bad_patches_are_a_422_and_change_nothing(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata=START)
    surrogate = await client.patch(
        f"/documents/{document_id}",
        content=b'{"metadata": {"k": "\\udfff"}}',  # JSON may spell it; jsonb refuses it
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert surrogate.status_code == 422, surrogate.text
    assert "surrogate" in surrogate.text
    for body in (
        {"metadata": [1, 2]},
        {"metadata": {"a": 1}, "title": "x"},  # unknown field
        {"metadata": {"big": "x" * 70_000}},  # over the metadata limit
    ):
        answer = await patch(client, alice, document_id, body)
        assert answer.status_code == 422, (body.keys(), answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    # Each patch fits, but merged they would not.
    half = await patch(client, alice, document_id, {"metadata": {"one": "x" * 40_000}})
    assert half.status_code == 200
    over = await patch(client, alice, document_id, {"metadata": {"two": "y" * 40_000}})
    assert over.status_code == 422
    assert "65,536 bytes" in over.json()["detail"]
    nan = await client.patch(
        f"/documents/{document_id}",
        content=b'{"metadata": {"n": NaN}}',
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert nan.status_code == 422
    read = await client.get(f"/documents/{document_id}", headers=alice.headers)
    assert read.json()["metadata"] == {**START, "one": "x" * 40_000}
    async with app.state.db.engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT metadata FROM documents WHERE id = :id"), {"id": document_id}
        )
    assert stored == {**START, "one": "x" * 40_000}


async def test_a_new_revision_keeps_the_metadata_unless_it_gives_its_own(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata=START)
    revised = await client.post(
        "/documents",
        json={"text": SAILING + "\n\nA new paragraph.", "filename": "sailing.md"},
        headers=alice.headers,
    )
    assert revised.status_code == 202, revised.text
    assert (revised.json()["id"], revised.json()["revision"]) == (document_id, 2)
    assert revised.json()["metadata"] == START
    await wait_for_status(client, alice, document_id, "ready", "failed")
    as_form = await client.post(
        "/documents",
        files={"file": ("sailing.md", (SAILING + "\n\nAnother.").encode(), "text/markdown")},
        data={"metadata": "null"},
        headers=alice.headers,
    )
    assert (as_form.json()["revision"], as_form.json()["metadata"]) == (3, START)
    await wait_for_status(client, alice, document_id, "ready", "failed")
    replaced = await client.post(
        "/documents",
        json={"text": SAILING + "\n\nThird.", "filename": "sailing.md", "metadata": {"t": 1}},
        headers=alice.headers,
    )
    assert (replaced.json()["revision"], replaced.json()["metadata"]) == (4, {"t": 1})
    await wait_for_status(client, alice, document_id, "ready", "failed")


async def test_an_upload_with_metadata_over_the_limit_is_a_422(
    client: httpx.AsyncClient, alice: Account
) -> None:
    answer = await client.post(
        "/documents",
        json={"text": SAILING, "filename": "big.md", "metadata": {"big": "x" * 70_000}},
        headers=alice.headers,
    )
    assert answer.status_code == 422, answer.text
    assert "65,536 bytes" in answer.text
    listed = await client.get("/documents", headers=alice.headers)
    assert listed.json()["total"] == 0


async def test_any_key_a_document_holds_can_be_filtered_on(
    alice: Account, ingest: Ingest, search: Search
) -> None:
    long_key = "section/" + "k" * 200  # keys of stored metadata are not capped, only the whole
    await ingest(alice, SAILING, "sailing.md", metadata={long_key: "yes"})
    found = await search(alice, "anchor chain", filters={"metadata": {long_key: "yes"}})
    assert found.status_code == 200, found.text
    assert found.json()["results"]
    other = await search(alice, "anchor chain", filters={"metadata": {long_key: "no"}})
    assert other.json()["results"] == []
    beyond = await search(alice, "anchor chain", filters={"metadata": {"k" * 65_537: "yes"}})
    assert beyond.status_code == 422
