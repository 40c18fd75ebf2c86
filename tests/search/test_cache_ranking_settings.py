"""The search cache is shared (Redis) by every process and outlives a restart: an answer
ranked under other settings (fusion, keyword weight, BM25 parameters, the candidate pool) is
another answer, and must not be served for these."""

from __future__ import annotations

from fastapi import FastAPI

from mainsail.search.schemas import SearchIn
from mainsail.search.service import Searcher
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import ASTRONOMY, BAKING, SAILING


async def test_searchers_with_other_ranking_settings_do_not_share_cached_answers(
    app: FastAPI, alice: Account, ingest: Ingest
) -> None:
    for i, text in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, text, f"doc-{i}.md", chunking={"chunk_size": 24, "chunk_overlap": 4})
    shared: Searcher = app.state.search
    assert shared.cache is not None
    request = SearchIn(query="anchor light at night, dough crust", top_k=20)
    first = await shared.search(alice.id, request)
    assert first.results
    for change in (
        {"fusion": "rrf"},
        {"keyword_weight": 0.9},
        {"bm25_k1": 2.0},
        {"candidates": 5, "max_top_k": 5},
    ):
        settings = shared.settings.model_copy(update=change)
        restarted = Searcher(shared.db, settings, shared.embed, shared.cache)
        uncached = Searcher(shared.db, settings, shared.embed, None)
        answer = await restarted.search(alice.id, request)
        expected = await uncached.search(alice.id, request)
        assert not answer.cached, change
        assert [(hit.chunk_id, hit.score) for hit in answer.results] == [
            (hit.chunk_id, hit.score) for hit in expected.results
        ], change
    # The same settings still share their answers.
    again = await Searcher(shared.db, shared.settings, shared.embed, shared.cache).search(
        alice.id, request
    )
    assert again.cached
