"""Fusion quality, offline: how ways of fusing keyword and vector rankings compare, with
their parameters chosen on queries the check never sees.

What is measured
    The corpus of each dataset is chunked by the service's chunker and ranked per query by
    the two retrievers exactly as ``bench/chunking_quality.py`` does (local int8 model, exact
    cosine; BM25 over PostgreSQL's ``english`` lexemes; pools of 100 chunks). The two pools,
    with each retriever's own scores, are then fused by each candidate function:

      rrf          Reciprocal Rank Fusion, 1 / (k + rank) summed (k 60).
      rrf-w        RRF with the keyword ranks weighted w (the vector ranks 1).
      minmax       a * keyword + (1 - a) * vector, each score scaled to [0, 1] over its pool
                   (a chunk outside a pool adds 0 for that retriever).
      zscore       the same with each pool's scores standardised (mean 0, sd 1); a chunk
                   outside a pool takes that pool's lowest score.

    Parameters are chosen on the *tune* queries (SciFact's train claims; half the SQuAD
    questions, a seeded split) by mean nDCG@10 over those two sets, and the chosen functions
    are reported on the *check* queries: SciFact test, the other SQuAD half, and Vaswani
    (not used for tuning at all). The figure that matters: whether a fusion is at least as
    good as the better single retriever on every check set.

Usage (from the repository root; ~6 minutes the first time, most of it embedding, then
about a minute with the embeddings cached in ``bench/.work/chunking-quality``)
    .venv/bin/python bench/fusion_quality.py

Results are printed and written to ``bench/results/fusion-quality-<date>.md``.
"""

from __future__ import annotations

import collections
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import chunking_quality as cq
import retrieval_quality as rq

Pool = list[tuple[int, float]]  # (chunk, score), best first
Fusion = Callable[[Pool, Pool], list[int]]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _order(scores: dict[int, float]) -> list[int]:
    return sorted(scores, key=lambda chunk: (-scores[chunk], chunk))


def rrf(k: float, weight: float = 1.0) -> Fusion:
    def fuse(keyword: Pool, vector: Pool) -> list[int]:
        scores: dict[int, float] = collections.defaultdict(float)
        for rank, (chunk, _) in enumerate(keyword, start=1):
            scores[chunk] += weight / (k + rank)
        for rank, (chunk, _) in enumerate(vector, start=1):
            scores[chunk] += 1.0 / (k + rank)
        return _order(scores)

    return fuse


def _minmax(pool: Pool) -> dict[int, float]:
    if not pool:
        return {}
    high, low = pool[0][1], pool[-1][1]
    span = high - low
    return {chunk: (score - low) / span if span > 0 else 1.0 for chunk, score in pool}


def _zscore(pool: Pool) -> tuple[dict[int, float], float]:
    if not pool:
        return {}, 0.0
    values = np.array([score for _, score in pool])
    sd = float(values.std()) or 1.0
    mean = float(values.mean())
    z = {chunk: (score - mean) / sd for chunk, score in pool}
    return z, min(z.values())


def minmax(alpha: float) -> Fusion:
    def fuse(keyword: Pool, vector: Pool) -> list[int]:
        k, v = _minmax(keyword), _minmax(vector)
        scores = {c: alpha * k.get(c, 0.0) + (1 - alpha) * v.get(c, 0.0) for c in k.keys() | v}
        return _order(scores)

    return fuse


def zscore(alpha: float) -> Fusion:
    def fuse(keyword: Pool, vector: Pool) -> list[int]:
        (k, k_floor), (v, v_floor) = _zscore(keyword), _zscore(vector)
        scores = {
            c: alpha * k.get(c, k_floor) + (1 - alpha) * v.get(c, v_floor) for c in k.keys() | v
        }
        return _order(scores)

    return fuse


@dataclass
class QuerySet:
    label: str
    dataset: rq.Dataset
    pools: dict[str, tuple[Pool, Pool]]  # query id -> (keyword, vector)
    docs: list[str]  # corpus id per chunk

    def ndcg(self, ranking: Callable[[Pool, Pool], list[int]]) -> float:
        documents = {
            q: cq.to_documents(ranking(kw, vec), self.docs) for q, (kw, vec) in self.pools.items()
        }
        return rq.scores(documents, self.dataset)[0]


def subset(
    dataset: rq.Dataset, query_ids: Sequence[str], qrels: dict[str, dict[str, int]]
) -> rq.Dataset:
    return rq.Dataset(
        dataset.spec,
        dataset.corpus,
        {q: dataset.queries[q] for q in query_ids},
        {q: qrels[q] for q in query_ids},
    )


def pools_for(
    dataset: rq.Dataset,
    queries: dict[str, str],
    chunker: object,
    embed: cq.EmbeddingCache,
    lexemes: cq.Lexemes,
) -> tuple[dict[str, tuple[Pool, Pool]], list[str]]:
    blocks = list(cq.parsed_blocks(dataset, markdown=False))
    chunks = cq.make_chunks(dataset, {"service": chunker}, blocks)["service"]
    vectors = embed(chunks.texts)
    bm25 = cq.BM25(lexemes(chunks.texts), chunks.tokens)
    ids = list(queries)
    query_vectors = embed([queries[q] for q in ids])
    query_terms = lexemes([queries[q] for q in ids])
    similarities = query_vectors @ vectors.T
    pools: dict[str, tuple[Pool, Pool]] = {}
    for row, query_id in enumerate(ids):
        order = np.argsort(-similarities[row], kind="stable")[: cq.POOL]
        vector = [(int(c), float(similarities[row, c])) for c in order]
        pools[query_id] = (bm25.scored(query_terms[row], cq.POOL), vector)
    return pools, chunks.docs


def load_sets() -> tuple[list[QuerySet], list[QuerySet]]:
    from mainsail.documents.chunking import Chunker
    from mainsail.embeddings.local import load_local_embedder

    cq.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    settings = rq.ingest.mainsail_settings()
    embedder = load_local_embedder(rq.MODEL_CACHE)
    embed = cq.EmbeddingCache(embedder.embed, embedder.name)
    chunker = Chunker(
        embedder.tokenizer, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap
    )
    lexemes = cq.Lexemes()
    tune: list[QuerySet] = []
    check: list[QuerySet] = []
    try:
        # SciFact: train claims tune, test claims check.
        scifact = rq.load_dataset(rq.SPECS["scifact"])
        base = rq.DATA_DIR / "scifact"
        train_qrels = rq.read_qrels(base / "qrels" / "train.tsv")
        texts = {str(q["_id"]): str(q["text"]) for q in rq.read_jsonl(base / "queries.jsonl")}
        train = rq.Dataset(
            scifact.spec, scifact.corpus, {q: texts[q] for q in train_qrels}, train_qrels
        )
        log("scifact: chunking, embedding, ranking")
        pools, docs = pools_for(
            scifact, {**train.queries, **scifact.queries}, chunker, embed, lexemes
        )
        tune.append(QuerySet("SciFact train", train, {q: pools[q] for q in train.queries}, docs))
        check.append(
            QuerySet("SciFact test", scifact, {q: pools[q] for q in scifact.queries}, docs)
        )
        # SQuAD: a seeded half of the questions tunes, the other half checks.
        squad = rq.load_dataset(rq.SPECS["squad"])
        log("squad: chunking, embedding, ranking")
        pools, docs = pools_for(squad, squad.queries, chunker, embed, lexemes)
        ids = sorted(squad.queries)
        random.Random(20261204).shuffle(ids)
        half = len(ids) // 2
        for label, part, target in (
            ("SQuAD half A", ids[:half], tune),
            ("SQuAD half B", ids[half:], check),
        ):
            data = subset(squad, part, squad.qrels)
            target.append(QuerySet(label, data, {q: pools[q] for q in part}, docs))
        vaswani = rq.load_dataset(rq.SPECS["vaswani"])
        log("vaswani: chunking, embedding, ranking")
        pools, docs = pools_for(vaswani, vaswani.queries, chunker, embed, lexemes)
        check.append(QuerySet("Vaswani", vaswani, pools, docs))
    finally:
        lexemes.close()
    return tune, check


def keyword_only(keyword: Pool, vector: Pool) -> list[int]:
    return [chunk for chunk, _ in keyword]


def vector_only(keyword: Pool, vector: Pool) -> list[int]:
    return [chunk for chunk, _ in vector]


def main() -> None:
    tune, check = load_sets()
    families: dict[str, tuple[Callable[[float], Fusion], list[float]]] = {
        "rrf-w (k 60, keyword weight)": (lambda w: rrf(60, w), [0.5, 1, 1.5, 2, 2.5, 3, 4]),
        "minmax (keyword share)": (minmax, [i / 10 for i in range(1, 10)]),
        "zscore (keyword share)": (zscore, [i / 10 for i in range(1, 10)]),
    }
    chosen: dict[str, Fusion] = {
        "keyword": keyword_only,
        "vector": vector_only,
        "rrf (k 60)": rrf(60),
        "minmax 0.5": minmax(0.5),
        "zscore 0.5": zscore(0.5),
        "service default (search.service.fuse_scores)": cq.fuse,
    }
    tuning_lines = ["| family | parameter | " + " | ".join(s.label for s in tune) + " | mean |"]
    tuning_lines.append("|---|---:|" + "---:|" * (len(tune) + 1))
    for family, (make, grid) in families.items():
        best: tuple[float, float] | None = None
        for value in grid:
            figures = [s.ndcg(make(value)) for s in tune]
            mean = sum(figures) / len(figures)
            tuning_lines.append(
                f"| {family} | {value:g} | "
                + " | ".join(f"{f:.3f}" for f in figures)
                + f" | {mean:.3f} |"
            )
            if best is None or mean > best[0]:
                best = (mean, value)
        assert best is not None
        chosen[f"{family.split(' ')[0]} {best[1]:g} (tuned)"] = make(best[1])
    lines = [
        "| fusion | " + " | ".join(s.label for s in check) + " | >= better single everywhere |"
    ]
    lines.append("|---|" + "---:|" * (len(check) + 1))
    singles = {s.label: max(s.ndcg(keyword_only), s.ndcg(vector_only)) for s in check}
    for label, fusion in chosen.items():
        figures = [s.ndcg(fusion) for s in check]
        ok = all(f >= singles[s.label] - 1e-9 for f, s in zip(figures, check, strict=True))
        single = label in ("keyword", "vector")
        lines.append(
            f"| {label} | "
            + " | ".join(f"{f:.3f}" for f in figures)
            + f" | {'-' if single else ('yes' if ok else 'no')} |"
        )
    report = "\n".join(
        [
            f"# Fusion quality, {time.strftime('%Y-%m-%d %H:%M')}",
            "",
            "bench/fusion_quality.py: the service's chunker and retrievers offline (local int8 "
            f"model, BM25 k1 {cq.K1} b {cq.B}, pools of {cq.POOL} chunks); nDCG@10 over "
            "documents (a document takes the rank of its best chunk).",
            "",
            "## Tuning (nDCG@10 on the tune queries)",
            "",
            *tuning_lines,
            "",
            "## Check (nDCG@10 on queries not used for tuning)",
            "",
            *lines,
            "",
        ]
    )
    print(report)
    rq.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = rq.RESULTS_DIR / f"fusion-quality-{time.strftime('%Y-%m-%d')}.md"
    path.write_text(report, encoding="utf-8")
    log(f"written to {path}")


if __name__ == "__main__":
    main()
