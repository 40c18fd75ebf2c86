from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.app import TEST_DATA_DIR, TEST_MODEL_CACHE, make_settings, wait_until
from tests.fixtures.identity import Account

FIXTURES = Path(__file__).parent / "fixtures"
QUICK_JOBS: dict[str, Any] = {"poll_interval_s": 0.2, "backoff_base_s": 0.05, "backoff_max_s": 0.1}


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url, jobs=QUICK_JOBS)


def essay(paragraphs: int, *, seed: int = 0) -> str:
    """Deterministic prose with sentences and paragraphs (no external data needed)."""
    words = [
        "harbour",
        "tide",
        "sail",
        "wind",
        "keel",
        "mast",
        "anchor",
        "chart",
        "compass",
        "rope",
        "deck",
        "hull",
        "current",
        "storm",
        "calm",
        "voyage",
        "crew",
        "lantern",
        "reef",
        "island",
        "beacon",
        "signal",
        "horizon",
        "journey",
    ]
    out = []
    for p in range(paragraphs):
        sentences = []
        for s in range(5):
            n = 8 + (p * 7 + s * 3 + seed) % 9
            sentence = " ".join(
                words[(p * 11 + s * 5 + i * 3 + seed) % len(words)] for i in range(n)
            )
            sentences.append(sentence.capitalize() + ".")
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def worker_env(database_url: URL, **settings: str) -> dict[str, str]:
    """The environment of a `mainsail worker` process sharing this test run's database, files
    and model cache; ``settings`` are more MAINSAIL_ variables (name without the prefix)."""
    return {
        **os.environ,
        "MAINSAIL_ENVIRONMENT": "test",
        "MAINSAIL_DATABASE_URL": database_url.render_as_string(hide_password=False),
        "MAINSAIL_DATA_DIR": str(TEST_DATA_DIR),
        "MAINSAIL_DOCUMENTS__MODEL_CACHE_DIR": str(TEST_MODEL_CACHE),
        "MAINSAIL_LLM__USE_STANDARD_ENV": "false",
        **{f"MAINSAIL_{name}": value for name, value in settings.items()},
    }


Upload = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def upload(client: httpx.AsyncClient) -> Upload:
    async def send(
        account: Account,
        content: bytes,
        filename: str = "notes.txt",
        content_type: str = "application/octet-stream",
        **fields: str,
    ) -> httpx.Response:
        return await client.post(
            "/documents",
            files={"file": (filename, content, content_type)},
            data=fields,
            headers=account.headers,
        )

    return send


async def wait_for_status(
    client: httpx.AsyncClient, account: Account, document_id: str, *statuses: str
) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal latest
        response = await client.get(f"/documents/{document_id}", headers=account.headers)
        latest = response.json()
        return latest.get("status") in statuses

    await wait_until(settled, within_s=60, interval=0.1)
    return latest


async def chunk_rows(app: FastAPI, document_id: str) -> list[dict[str, Any]]:
    async with app.state.db.engine.connect() as connection:
        result = await connection.execute(
            text(
                "SELECT revision, ordinal, text, token_count, char_start, char_end, page, "
                "page_end, heading, vector_dims(embedding) AS dims, index_version "
                "FROM chunks WHERE document_id = :id ORDER BY revision, ordinal"
            ),
            {"id": document_id},
        )
        return [dict(row) for row in result.mappings()]
