"""Vector search is exact on small scopes and uses HNSW on large ones; either way it returns
what an exact ranking of the caller's own chunks returns, even when the index's nearest
neighbours belong to someone else."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.documents.conftest import essay
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import ASTRONOMY, BAKING, SAILING

POOL = 5


@pytest.fixture
def search_settings() -> dict[str, Any]:
    # Always the index, with a candidate list so short that other users' chunks crowd it.
    return {
        "exact_below": 0,
        "candidates": POOL,
        "max_top_k": POOL,
        "ef_search": POOL,
        "hnsw_overfetch": 1,
    }


async def exact_ranking(app: FastAPI, owner: Account, query: str) -> list[int]:
    """Brute force over the owner's stored vectors."""
    async with app.state.db.engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT c.id, c.embedding::text AS vector FROM chunks c "
                    "JOIN documents d ON d.id = c.document_id "
                    "WHERE d.owner_id = :owner AND c.revision = d.active_revision"
                ),
                {"owner": owner.id},
            )
        ).all()
        version = await connection.scalar(
            text("SELECT embedder FROM index_versions WHERE state = 'active'")
        )
    embedder = app.state.documents.embedders(version)
    query_vector = embedder.embed([query])[0]
    ids = np.array([row.id for row in rows])
    vectors = np.array([np.fromstring(row.vector.strip("[]"), sep=",") for row in rows])
    distances = 1 - vectors @ query_vector
    order = sorted(range(len(ids)), key=lambda i: (round(float(distances[i]), 5), int(ids[i])))
    return [int(ids[i]) for i in order]


async def test_the_index_is_used_and_agrees_with_exact_search(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    for i, doc in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, doc, f"d{i}.md")
    query = "a lens or a mirror to see faint stars"
    response = (await search(alice, query, mode="vector", top_k=POOL)).json()
    assert response["vector_strategy"] == "hnsw"
    expected = await exact_ranking(app, alice, query)
    assert [hit["chunk_id"] for hit in response["results"]] == expected[:POOL]


async def test_when_filters_drop_the_index_s_candidates_it_falls_back_to_exact(
    app: FastAPI, alice: Account, bob: Account, ingest: Ingest, search: Search
) -> None:
    # bob's many chunks are the nearest to the query; alice's few are far from it.
    await ingest(bob, essay(30), "voyage.txt", chunking={"chunk_size": 24, "chunk_overlap": 0})
    for i, doc in enumerate([SAILING, BAKING]):
        await ingest(alice, doc, f"d{i}.md")
    query = "storm at sea, the crew and the lantern on the deck of the hull"
    response = (await search(alice, query, mode="vector", top_k=POOL)).json()
    assert response["vector_strategy"] == "exact"  # the index returned too few of alice's
    expected = await exact_ranking(app, alice, query)
    assert [hit["chunk_id"] for hit in response["results"]] == expected[:POOL]
    bobs = (await search(bob, query, mode="vector", top_k=POOL)).json()
    assert bobs["vector_strategy"] == "hnsw"  # his chunks fill the index's short list
    # Approximate with a candidate list this short, but only ever his own chunks.
    assert {hit["chunk_id"] for hit in bobs["results"]} <= set(await exact_ranking(app, bob, query))
    assert len(bobs["results"]) == POOL


async def test_the_one_round_trip_statement_agrees_with_exact_search(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large versions take the statement that keeps ef_search on the session; force it here.
    from mainsail.search import service

    monkeypatch.setattr(service, "HNSW_PLAN_ROWS", 0)
    for i, doc in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, doc, f"d{i}.md")
    query = "a lens or a mirror to see faint stars"
    expected = await exact_ranking(app, alice, query)
    for _ in range(2):  # the second finds ef_search already set on the connection
        response = (await search(alice, query, mode="vector", top_k=POOL)).json()
        assert response["vector_strategy"] == "hnsw"
        assert [hit["chunk_id"] for hit in response["results"]] == expected[:POOL]


@pytest.mark.parametrize("plan_rows", [0, None])
async def test_an_excluded_word_narrows_the_index_s_results_to_an_exact_ranking(
    app: FastAPI,
    alice: Account,
    ingest: Ingest,
    search: Search,
    monkeypatch: pytest.MonkeyPatch,
    plan_rows: int | None,
) -> None:
    """Both HNSW statements (the one-round-trip one when ``plan_rows`` is 0) take the
    exclusion as a scope filter: what comes back is the exact ranking of alice's chunks
    without the word, whichever strategy answered."""
    from mainsail.search import service

    if plan_rows is not None:
        monkeypatch.setattr(service, "HNSW_PLAN_ROWS", plan_rows)
    for i, doc in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, doc, f"d{i}.md", chunking={"chunk_size": 24, "chunk_overlap": 0})
    query = "a lens or a mirror to see faint stars"
    response = (await search(alice, f"{query} -telescope", mode="vector", top_k=POOL)).json()
    async with app.state.db.engine.connect() as connection:
        with_word = set(
            (
                await connection.execute(
                    text("SELECT id FROM chunks WHERE lower(text) LIKE '%telescope%'")
                )
            ).scalars()
        )
    assert with_word  # the exclusion has something to exclude
    expected = [i for i in await exact_ranking(app, alice, query) if i not in with_word]
    assert [hit["chunk_id"] for hit in response["results"]] == expected[:POOL]
