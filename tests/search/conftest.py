from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, wait_for_status
from tests.fixtures.app import make_settings
from tests.fixtures.identity import Account


@pytest.fixture
def search_settings() -> dict[str, Any]:
    """Overrides of the search settings for one test module (override the fixture)."""
    return {}


@pytest.fixture
def settings(database_url: URL, search_settings: dict[str, Any]) -> Settings:
    return make_settings(database_url, jobs=QUICK_JOBS, search=search_settings)


Ingest = Callable[..., Awaitable[str]]


@pytest.fixture
def ingest(client: httpx.AsyncClient) -> Ingest:
    """Uploads inline text and waits until it is searchable; returns the document id."""

    async def send(
        account: Account,
        text: str,
        filename: str,
        *,
        collection: str | None = None,
        metadata: dict[str, Any] | None = None,
        chunking: dict[str, int] | None = None,
    ) -> str:
        body: dict[str, Any] = {"text": text, "filename": filename}
        if collection is not None:
            body["collection"] = collection
        if metadata is not None:
            body["metadata"] = metadata
        if chunking is not None:
            body["chunking"] = chunking
        response = await client.post("/documents", json=body, headers=account.headers)
        assert response.status_code in (200, 202), response.text
        document_id = str(response.json()["id"])
        document = await wait_for_status(client, account, document_id, "ready", "failed")
        assert document["status"] == "ready", document["error"]
        return document_id

    return send


Search = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def search(client: httpx.AsyncClient) -> Search:
    async def send(account: Account, query: str, **body: Any) -> httpx.Response:
        return await client.post("/search", json={"query": query, **body}, headers=account.headers)

    return send
