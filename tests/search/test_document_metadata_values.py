"""Metadata values that only JSON tells apart (1, 1.0, true), and the 65,536-byte cap as a
client sends metadata (compact JSON), in either upload body and through PATCH."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import SAILING


async def test_a_patch_true_over_1_alone_changes_the_metadata(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, ingest: Ingest, search: Search
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata={"flag": 1})
    changed = await client.patch(
        f"/documents/{document_id}", json={"metadata": {"flag": True}}, headers=alice.headers
    )
    assert changed.status_code == 200, changed.text
    async with app.state.db.engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT metadata::text FROM documents WHERE id = :id"), {"id": document_id}
        )
    assert json.loads(stored)["flag"] is True, stored  # (1 == True in Python)
    hits = await search(alice, "anchor chain", filters={"metadata": {"flag": True}})
    assert hits.json()["results"], hits.text


async def test_a_revision_with_true_over_1_changes_the_metadata(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    document_id = await ingest(alice, SAILING, "sailing.md", metadata={"flag": 1})
    revised = await client.post(
        "/documents",
        json={"text": SAILING + "\n\nMore.", "filename": "sailing.md", "metadata": {"flag": True}},
        headers=alice.headers,
    )
    assert revised.status_code == 202, revised.text
    async with app.state.db.engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT metadata::text FROM documents WHERE id = :id"), {"id": document_id}
        )
    assert json.loads(stored)["flag"] is True, stored


def _many_keys() -> dict[str, int]:
    # ~60.5 KB as the client sends it (compact), ~71.5 KB with json.dumps' ", " and ": ".
    return {f"k{i:05d}": 1 for i in range(5_500)}


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        # ~60.5 KB compact: under the cap, though json.dumps' spaced form is over it.
        (json.dumps(_many_keys(), separators=(",", ":")), 202),
        # Over the cap: the multipart reader's field limit catches it first, and it is a 422
        # as in a JSON body, not the 400 of other over-long form fields.
        (json.dumps({"big": "x" * 70_000}), 422),
    ],
    ids=["compact-under-the-cap", "over-the-cap"],
)
async def test_the_cap_on_a_form_field_is_the_json_bodys(
    client: httpx.AsyncClient, alice: Account, field: str, expected: int
) -> None:
    answer = await client.post(
        "/documents",
        files={"file": ("many.md", SAILING.encode(), "text/markdown")},
        data={"metadata": field},
        headers=alice.headers,
    )
    assert answer.status_code == expected, answer.text[:300]


async def test_compact_metadata_under_the_cap_is_taken_in_a_json_body(
    client: httpx.AsyncClient, alice: Account
) -> None:
    answer = await client.post(
        "/documents",
        content=json.dumps(
            {"text": SAILING, "filename": "many.md", "metadata": _many_keys()},
            separators=(",", ":"),
        ).encode(),
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert answer.status_code == 202, answer.text[:300]
