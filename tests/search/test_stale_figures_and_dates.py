"""POST /search with date bounds finer than a microsecond, and with scope figures served
stale while a slow count runs: an empty figure, a count that grew."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.documents.conftest import essay
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import SAILING

SMALL = {"chunk_size": 24, "chunk_overlap": 0}


@pytest.fixture
def search_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


async def test_date_filters_with_sub_microsecond_bounds_are_exact(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, search: Search
) -> None:
    """[created_after, created_before) is exact: a bound a tenth of a microsecond after a
    document's created_at excludes it from created_after and includes it in created_before.
    A 7th fraction digit (as .NET's "o" format writes) is rounded up, not truncated (which
    put both bounds on created_at itself: the document in the wrong half both times)."""
    document_id = await ingest(alice, SAILING, "sailing.md")
    created = (await client.get(f"/documents/{document_id}", headers=alice.headers)).json()[
        "created_at"
    ]
    at = datetime.fromisoformat(created)
    just_after = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "1+00:00"  # created_at + 0.1 us
    after = (await search(alice, "anchor", filters={"created_after": just_after})).json()
    before = (await search(alice, "anchor", filters={"created_before": just_after})).json()
    assert after["results"] == []  # created before the bound
    assert {hit["document_id"] for hit in before["results"]} == {document_id}


async def test_a_stale_empty_scope_figure_does_not_hide_new_keyword_matches(
    alice: Account, ingest: Ingest, search: Search, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow scope figures answer stale while a background count runs: a document's chunks
    more or less in BM25's N. But a stale N of 0 is counted again: the keyword retriever
    must not return nothing for a scope that now holds matching passages."""
    from mainsail.search import service

    monkeypatch.setattr(service, "SLOW_FIGURES_S", 0.0)  # every count took "long"
    await ingest(alice, SAILING, "sailing.md", collection="sea")
    scope = {"collections": ["later"]}
    assert (await search(alice, "anchor", mode="keyword", filters=scope)).json()["results"] == []
    new = await ingest(alice, "Anchor the dinghy at dusk.", "later.md", collection="later")
    found = (await search(alice, "anchor", mode="keyword", filters=scope)).json()["results"]
    assert [hit["document_id"] for hit in found] == [new]


STALE_HNSW = {
    "exact_below": 0,
    "candidates": 5,
    "max_top_k": 5,
    "ef_search": 5,
    "hnsw_overfetch": 1,
}


@pytest.mark.parametrize("search_settings", [STALE_HNSW], indirect=True)
async def test_a_stale_scope_count_does_not_cut_the_vector_ranking_short(
    app: FastAPI,
    alice: Account,
    bob: Account,
    ingest: Ingest,
    search: Search,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scope count served stale decides how many index candidates are "enough"
    only when fresh: with an old count of 2, the 2 of alice's chunks among the index's
    candidates must not pass for the whole scope, which now holds many more (a short page,
    cached). The search falls back to exact and fills the page."""
    from mainsail.search import service

    monkeypatch.setattr(service, "SLOW_FIGURES_S", 0.0)  # every count took "long"
    query = "how much anchor chain to pay out when anchoring"
    for i in range(8):  # bob's passages crowd the index's short candidate list
        await ingest(bob, f"Pay out anchor chain {i} times the depth when anchoring.", f"b{i}.txt")
    near = [
        "How much anchor chain to pay out when anchoring.",
        "Anchor chain to pay out when anchoring a yacht.",
    ]
    for i, body in enumerate(near):
        await ingest(alice, body, f"a{i}.txt", collection="c")
    scope = {"collections": ["c"]}
    await search(alice, query, mode="vector", top_k=5, filters=scope)  # counts 2
    await ingest(alice, essay(6, seed=5), "far.txt", collection="c", chunking=SMALL)
    second = (await search(alice, query, mode="vector", top_k=5, filters=scope)).json()
    await asyncio.gather(*app.state.search._figures.refreshing.values())
    third = (await search(alice, query, mode="vector", top_k=5, filters=scope)).json()
    # alice's scope now holds far more than 5 chunks: full pages, before and after the count.
    assert (len(second["results"]), len(third["results"])) == (5, 5)
