"""Large scopes: a query word common to much of the corpus no longer finds passages by itself
(scoring all of them would take seconds at a million chunks); it still scores where the
query's rarer words find passages. Forced here on a small corpus by the settings."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from mainsail.search import repository
from mainsail.search.schemas import Filters
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search

RARE = {3: "lighthouse", 17: "lighthouse", 29: "lighthouse"}


@pytest.fixture
def search_settings() -> dict[str, Any]:
    return {"common_term_scope": 1, "common_term_fraction": 0.5}


def harbour_log() -> str:
    """40 short paragraphs, every one about the harbour, three about a lighthouse."""
    words = ["ferry", "crane", "tugboat", "pilot", "bollard", "mooring", "dredger", "buoy"]
    return "\n\n".join(
        f"Harbour note {i}. The harbour master logged the "
        f"{RARE.get(i, words[i % len(words)])} at quay {i} before the tide turned."
        for i in range(40)
    )


async def bm25(
    app: FastAPI, owner: Account, query: str, common_fraction: float | None
) -> list[tuple[int, float]]:
    """The keyword statement, with the lexemes the statistics put in ``common_fraction`` of
    the rows or more treated as common (None: none are)."""
    async with app.state.db.autocommit() as connection:
        version = await repository.active_version(connection, owner.id)
        assert version is not None
        where = repository.scope(version.id, owner.id, Filters())
        chunks, mean = await repository.scope_stats(connection, where)
        common = (
            await repository.common_lexemes(connection, common_fraction)
            if common_fraction is not None
            else None
        )
        return await repository.keyword_bm25(
            connection,
            where,
            query,
            chunks=chunks,
            mean_tokens=mean,
            k1=1.2,
            b=0.75,
            limit=100,
            common=common,
        )


async def test_a_common_word_scores_only_where_a_rarer_one_finds_passages(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    await ingest(
        alice, harbour_log(), "harbour.md", chunking={"chunk_size": 24, "chunk_overlap": 0}
    )
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text("ANALYZE chunks"))
        chunks = await connection.scalar(text("SELECT count(*) FROM chunks"))
        common = await repository.common_lexemes(connection, 0.5)
    assert "harbour" in common  # stemmed as the index stems it; in every passage
    assert "lighthous" not in common
    assert chunks is not None
    assert chunks >= 20

    every = await bm25(app, alice, "harbour lighthouse", None)
    pruned = await bm25(app, alice, "harbour lighthouse", 0.5)
    assert len(every) == chunks  # "harbour" is in every passage
    async with app.state.db.autocommit() as connection:
        with_rare = set(
            (
                await connection.execute(
                    text("SELECT id FROM chunks WHERE text ILIKE '%lighthouse%'")
                )
            ).scalars()
        )
    assert {chunk_id for chunk_id, _ in pruned} == with_rare
    # The same ranking and, with "harbour"'s frequency estimated from the statistics (in
    # every row here), the same scores as scoring every passage.
    assert [chunk_id for chunk_id, _ in pruned] == [chunk_id for chunk_id, _ in every][:3]
    for (_, score), (_, exact) in zip(pruned, every, strict=False):
        assert score == pytest.approx(exact, rel=0.05)

    # Words under the fraction: as before, every match scored exactly.
    assert await bm25(app, alice, "ferry lighthouse", 0.5) == await bm25(
        app, alice, "ferry lighthouse", None
    )
    # Only common words: the least common of them still finds passages.
    assert len(await bm25(app, alice, "harbour", 0.5)) == chunks
    # Through the service (scope of at least one chunk: pruned).
    found = (await search(alice, "harbour lighthouse", mode="keyword", top_k=50)).json()
    assert {hit["chunk_id"] for hit in found["results"]} == with_rare
