"""A version's HNSW index is built once the version holds more chunks than exact search
covers (``exact_below``): before that no search could use it and every insert would pay for
it. The ingestion that crosses the line queues one ``vector_index`` job; searches are exact
before and use the index after."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.documents.conftest import essay
from tests.fixtures.app import wait_until
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import SAILING

EXACT_BELOW = 6


@pytest.fixture
def search_settings() -> dict[str, Any]:
    return {"exact_below": EXACT_BELOW, "candidates": 5, "max_top_k": 5}


async def scalar(app: FastAPI, sql: str, **params: Any) -> Any:
    async with app.state.db.engine.connect() as connection:
        return await connection.scalar(text(sql), params)


async def index_state(app: FastAPI) -> bool | None:
    """None: no index for the active version; else whether it is valid."""
    return await scalar(
        app,
        "SELECT i.indisvalid FROM index_versions v "
        "LEFT JOIN pg_index i ON i.indexrelid = to_regclass('ix_chunks_embedding_v' || v.id) "
        "WHERE v.state = 'active'",
    )


async def vector_index_jobs(app: FastAPI) -> int:
    return int(await scalar(app, "SELECT count(*) FROM jobs WHERE kind = 'vector_index'"))


async def test_the_index_comes_once_the_version_outgrows_exact_search(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    chunks = await scalar(app, "SELECT count(*) FROM chunks")
    assert 0 < chunks <= EXACT_BELOW
    assert await index_state(app) is None
    assert await vector_index_jobs(app) == 0
    small = (await search(alice, "anchor chain", mode="vector", top_k=5)).json()
    assert small["vector_strategy"] == "exact"
    assert small["results"]

    # Past the line: one job builds the index, and searches of a scope that large use it.
    await ingest(alice, essay(12), "voyage.txt", chunking={"chunk_size": 24, "chunk_overlap": 0})
    assert await scalar(app, "SELECT count(*) FROM chunks") > EXACT_BELOW

    async def built() -> bool:
        return await index_state(app) is True

    await wait_until(built, within_s=30)
    job_state = await scalar(app, "SELECT state FROM jobs WHERE kind = 'vector_index'")
    assert job_state == "succeeded"
    large = (await search(alice, "storm at sea and the crew", mode="vector", top_k=5)).json()
    assert large["vector_strategy"] == "hnsw"
    assert len(large["results"]) == 5

    # Later ingestions find the index there: no second job.
    await ingest(alice, essay(2, seed=3), "more.txt")
    assert await vector_index_jobs(app) == 1


async def test_without_its_index_a_large_version_is_still_searched(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    # Between the ingestion that crosses the line and the job's end there is no index: the
    # statement meant for it ranks the scope without it.
    await ingest(alice, essay(12), "voyage.txt", chunking={"chunk_size": 24, "chunk_overlap": 0})

    async def built() -> bool:
        return await index_state(app) is True

    await wait_until(built, within_s=30)
    version = await scalar(app, "SELECT id FROM index_versions WHERE state = 'active'")
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text(f"DROP INDEX ix_chunks_embedding_v{int(version)}"))
    answer = (await search(alice, "storm at sea and the crew", mode="vector", top_k=5)).json()
    assert answer["vector_strategy"] == "hnsw"
    assert len(answer["results"]) == 5
