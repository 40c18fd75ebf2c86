"""An upload that waits too long on the database is told to retry, and nothing is lost."""

from __future__ import annotations

import hashlib

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, essay
from tests.fixtures.app import make_settings
from tests.fixtures.database import asyncpg_dsn
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url, jobs=QUICK_JOBS, statement_timeout_ms=500)


async def test_an_upload_kept_waiting_by_the_same_bytes_is_a_503_to_retry(
    client: httpx.AsyncClient, database_url: URL, alice: Account
) -> None:
    text, collection = essay(3), "busy"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    # Another upload of the same bytes holds the lock for longer than a statement may wait
    # (a slow object store, in practice).
    holder = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"documents:{alice.id}:{collection}:{digest}",
            )
            body = {"text": text, "collection": collection}
            waited = await client.post("/documents", json=body, headers=alice.headers)
    finally:
        await holder.close()
    assert waited.status_code == 503
    assert waited.headers["content-type"] == "application/problem+json"
    assert waited.headers["retry-after"] == "1"
    assert waited.json()["code"] == "database_busy"
    listed = await client.get(
        "/documents", params={"collection": collection}, headers=alice.headers
    )
    assert listed.json()["total"] == 0  # the refused upload left nothing half made

    retried = await client.post("/documents", json=body, headers=alice.headers)
    assert retried.status_code == 202
    listed = await client.get(
        "/documents", params={"collection": collection}, headers=alice.headers
    )
    assert listed.json()["total"] == 1
