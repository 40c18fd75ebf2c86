"""Search quality: hybrid ranks documents at least as well as either retriever alone.

The data is a small committed subset of SciFact (``tests/search/data``, see its README): 40
test claims, their relevant abstracts, and for each claim the abstracts that a plain BM25 and
the embedding model rank highest without being relevant. Everything goes through the API:
the abstracts are uploaded and ingested by the real pipeline (chunking, the local embedder,
PostgreSQL full text), each claim is searched in every mode, and nDCG@10 is computed over
documents (a document takes the rank of its best chunk). ``bench/retrieval_quality.py`` runs
the same measurement on the whole corpus.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.search.metrics import ndcg_at
from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.identity import Account
from tests.search.conftest import Search

DATA = Path(__file__).parent / "data"
COLLECTION = "scifact-subset"
MODES = ("keyword", "vector", "hybrid")
UPLOADS_IN_FLIGHT = 8
# Sanity floors, well below what the system measured on this subset when the test was
# written (keyword 0.710, vector 0.686, hybrid 0.741); a broken retriever falls far below.
FLOORS = {"keyword": 0.55, "vector": 0.55, "hybrid": 0.60}


@pytest.fixture
def settings(database_url: URL, search_settings: dict[str, Any]) -> Settings:
    # ~200 uploads, status polls and 120 searches in well under a minute: more than the
    # default per-user rate limit allows. Four ingestion jobs at a time overlap one job's
    # database work with another's embedding (about 40 s instead of 52 s for the 195 files).
    return make_settings(
        database_url,
        jobs={**QUICK_JOBS, "concurrency": 4},
        search=search_settings,
        rate_limit={"user": "100000/minute"},
    )


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_subset() -> tuple[list[dict[str, str]], dict[str, str], dict[str, set[str]]]:
    corpus = read_jsonl(DATA / "scifact_subset_corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(DATA / "scifact_subset_queries.jsonl")}
    qrels: dict[str, set[str]] = {}
    lines = (DATA / "scifact_subset_qrels.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        query_id, doc_id, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(query_id, set()).add(doc_id)
    return corpus, queries, qrels


async def upload_all(
    client: httpx.AsyncClient, account: Account, corpus: list[dict[str, str]]
) -> None:
    """Uploads every abstract (title, blank line, text) a few at a time and waits until the
    job runner has ingested them all."""
    gate = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

    async def upload(doc: dict[str, str]) -> None:
        body = {
            "text": f"{doc['title']}\n\n{doc['text']}" if doc["title"] else doc["text"],
            "filename": f"{doc['_id']}.txt",
            "collection": COLLECTION,
            "metadata": {"doc_id": doc["_id"]},
        }
        async with gate:
            response = await client.post("/documents", json=body, headers=account.headers)
        assert response.status_code == 202, response.text

    await asyncio.gather(*(upload(doc) for doc in corpus))

    async def count(status: str) -> int:
        response = await client.get(
            "/documents",
            params={"collection": COLLECTION, "status": status, "limit": 1},
            headers=account.headers,
        )
        assert response.status_code == 200, response.text
        return int(response.json()["total"])

    async def all_ready() -> bool:
        assert await count("failed") == 0
        return await count("ready") == len(corpus)

    await wait_until(all_ready, within_s=240, interval=0.5)


async def ranked_documents(search: Search, account: Account, query: str, mode: str) -> list[str]:
    """The corpus ids of the hits, each at the rank of its best chunk."""
    response = await search(
        account, query, mode=mode, top_k=100, filters={"collections": [COLLECTION]}
    )
    assert response.status_code == 200, response.text
    ranked: dict[str, None] = {}
    for hit in response.json()["results"]:
        ranked.setdefault(hit["metadata"]["doc_id"], None)
    return list(ranked)


async def test_hybrid_beats_each_single_mode_on_a_scifact_subset(
    client: httpx.AsyncClient, alice: Account, search: Search
) -> None:
    corpus, queries, qrels = load_subset()
    assert len(queries) == len(qrels) >= 30
    started = time.perf_counter()
    await upload_all(client, alice, corpus)
    ingested_s = time.perf_counter() - started

    figures: dict[str, float] = {}
    for mode in MODES:
        per_query = [
            ndcg_at(
                await ranked_documents(search, alice, queries[q], mode),
                dict.fromkeys(qrels[q], 1.0),
                10,
            )
            for q in qrels
        ]
        figures[mode] = sum(per_query) / len(per_query)
    shown = ", ".join(f"{mode} {value:.3f}" for mode, value in figures.items())
    searched_s = time.perf_counter() - started - ingested_s
    print(  # shown with -s
        f"nDCG@10 on the SciFact subset ({len(qrels)} queries, {len(corpus)} documents "
        f"ingested in {ingested_s:.1f} s, searched in {searched_s:.1f} s): {shown}"
    )

    for mode, floor in FLOORS.items():
        assert figures[mode] >= floor, f"{mode} nDCG@10 below {floor}: {shown}"
    assert figures["hybrid"] >= figures["keyword"], shown
    assert figures["hybrid"] >= figures["vector"], shown
    assert figures["hybrid"] > min(figures["keyword"], figures["vector"]), shown
