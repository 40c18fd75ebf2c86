"""Chunking quality, offline: how the chunks of a chunker rank, without the service.

What is measured
    Each corpus document of a dataset is written as the retrieval benchmark uploads it (title,
    a blank line, the text), parsed as an upload is (type sniffed from the bytes) and cut by
    the service's chunker at the default chunk size and overlap; with ``--against REV`` also
    by the chunker of that git revision (``src/mainsail/documents/chunking.py`` there), on
    the same blocks. The chunks are ranked for every judged query the way ``POST /search``
    ranks them over a collection this small:

      vector   the local model (int8, as the service's default index version), exact cosine.
      keyword  BM25 in Python over the lexemes PostgreSQL's ``english`` configuration gives
               (an embedded PostgreSQL computes ``to_tsvector``, as the ``chunks.tsv`` column
               does), any query lexeme matching, k1 1.2, b 0.75, lengths in model tokens.
      hybrid   the service's score fusion (``search.service.fuse_scores``, keyword weight
               0.5) of the first 100 chunks of each, per chunk.

    A document takes the rank of its best chunk. Reported per chunker: nDCG@10, Recall@100
    (documents among the 100-chunk pool, so capped as the service's default settings are),
    chunks, and the share of "title-only" chunks (the document's title and nothing else)
    among each mode's first 10 chunks. ``bench/retrieval_quality.py`` measures the service
    itself end to end; this is the quick check for a chunking change (minutes, most of it
    embedding; embeddings are cached by text in ``bench/.work/chunking-quality``).

Usage (from the repository root)
    .venv/bin/python bench/chunking_quality.py --against HEAD
    .venv/bin/python bench/chunking_quality.py --datasets squad --against HEAD~3
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import retrieval_quality as rq

CACHE_DIR = rq.WORK_ROOT / "chunking-quality"
POOL = 100  # SearchSettings: max(candidates, max_top_k) at their defaults
KEYWORD_WEIGHT = rq.SERVICE_KEYWORD_WEIGHT
K1, B = 1.2, 0.75
MODES = rq.MODES


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Chunks:
    label: str
    texts: list[str]
    docs: list[str]  # corpus id per chunk
    tokens: list[int]
    title_only: list[bool]
    headings: list[tuple[str, ...]]


def load_chunker_module(rev: str | None) -> Any:
    if rev is None:
        from mainsail.documents import chunking

        return chunking
    source = subprocess.run(
        ["git", "show", f"{rev}:src/mainsail/documents/chunking.py"],
        cwd=rq.ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()[:12]
    path = CACHE_DIR / f"chunking_{digest}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def parsed_blocks(dataset: rq.Dataset, markdown: bool) -> Iterator[tuple[str, list[Any]]]:
    from mainsail.documents.parsing import parse, sniff_file

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder) / ("document.md" if markdown else "document.txt")
        for corpus_id, doc in dataset.corpus.items():
            text = rq.document_text(doc)
            if markdown and (doc.get("title") or "").strip():
                text = f"# {text}"  # the title as a heading: every chunk's heading path
            scratch.write_text(text, encoding="utf-8")
            yield corpus_id, list(parse(scratch, sniff_file(scratch, scratch.name)))


def make_chunks(
    dataset: rq.Dataset, chunkers: dict[str, Any], blocks: list[tuple[str, list[Any]]]
) -> dict[str, Chunks]:
    out = {label: Chunks(label, [], [], [], [], []) for label in chunkers}
    for corpus_id, doc_blocks in blocks:
        title = (dataset.corpus[corpus_id].get("title") or "").strip()
        for label, chunker in chunkers.items():
            target = out[label]
            for chunk in chunker.chunks(iter(doc_blocks)):
                target.texts.append(chunk.text)
                target.docs.append(corpus_id)
                target.tokens.append(chunk.token_count)
                target.title_only.append(bool(title) and chunk.text.strip() == title)
                target.headings.append(tuple(chunk.heading))
    return out


class EmbeddingCache:
    """Vectors by the sha1 of their text, kept between runs in one .npz per model."""

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], name: str) -> None:
        self.embed = embed
        self.path = CACHE_DIR / f"embeddings-{name.replace('/', '_').replace('@', '-')}.npz"
        self.rows: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as stored:
                self.rows = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest() for text in texts]
        todo = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self.rows}.items()
        )
        if todo:
            log(f"embedding {len(todo):,} texts ({len(self.rows):,} cached)")
            started = time.perf_counter()
            for start in range(0, len(todo), 512):
                part = todo[start : start + 512]
                vectors = self.embed([text for _, text in part])
                self.rows.update(zip((key for key, _ in part), vectors, strict=True))
            log(f"embedded in {time.perf_counter() - started:.0f} s")
            self.save()
        matrix = np.stack([self.rows[key] for key in keys]).astype(np.float32)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def save(self) -> None:
        keys = np.array(list(self.rows))
        np.savez(self.path, keys=keys, vectors=np.stack(list(self.rows.values())))


class Lexemes:
    """``to_tsvector('english', text)`` as {lexeme: positions counted}, from a throwaway
    embedded PostgreSQL."""

    def __init__(self) -> None:
        from mainsail.core.embedded_pg import get_server

        self.folder = tempfile.mkdtemp(prefix="mainsail-chunking-pg-")
        self.server = get_server(Path(self.folder), cleanup_mode="delete")
        self.cache: dict[str, dict[str, int]] = {}

    def close(self) -> None:
        self.server.cleanup()

    def __call__(self, texts: Sequence[str]) -> list[dict[str, int]]:
        todo = sorted(set(texts) - self.cache.keys())
        if todo:
            self.cache.update(zip(todo, asyncio.run(self._fetch(todo)), strict=True))
        return [self.cache[text] for text in texts]

    async def _fetch(self, texts: list[str]) -> list[dict[str, int]]:
        import asyncpg

        out: list[dict[str, int]] = [{} for _ in texts]
        connection = await asyncpg.connect(self.server.get_uri())
        try:
            for start in range(0, len(texts), 2000):
                rows = await connection.fetch(
                    """
                    SELECT o.i, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
                    FROM unnest($1::text[]) WITH ORDINALITY AS o(t, i),
                         unnest(to_tsvector('english'::regconfig, o.t)) AS u
                    """,
                    texts[start : start + 2000],
                )
                for row in rows:
                    out[start + row["i"] - 1][row["lexeme"]] = row["tf"]
        finally:
            await connection.close()
        return out


class BM25:
    """The service's keyword scoring (``search.repository.keyword_bm25``), in Python."""

    def __init__(self, lexemes: list[dict[str, int]], tokens: list[int]) -> None:
        self.tokens = tokens
        self.n = len(tokens)
        self.mean = max(sum(tokens) / max(len(tokens), 1), 1.0)
        self.postings: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for chunk, terms in enumerate(lexemes):
            for lexeme, tf in terms.items():
                self.postings[lexeme].append((chunk, tf))

    def scored(self, terms: Iterable[str], limit: int) -> list[tuple[int, float]]:
        """The first ``limit`` chunks with their scores, best first (ties: lower chunk)."""
        scores: dict[int, float] = collections.defaultdict(float)
        for lexeme in set(terms):
            if "\\" in lexeme or lexeme not in self.postings:
                continue
            postings = self.postings[lexeme]
            idf = math.log(1 + (self.n - len(postings) + 0.5) / (len(postings) + 0.5))
            for chunk, tf in postings:
                norm = 1 - B + B * self.tokens[chunk] / self.mean
                scores[chunk] += idf * tf * (K1 + 1) / (tf + K1 * norm)
        best = sorted(scores, key=lambda chunk: (-scores[chunk], chunk))[:limit]
        return [(chunk, scores[chunk]) for chunk in best]


def fuse(keyword: list[tuple[int, float]], vector: list[tuple[int, float]]) -> list[int]:
    """The service's hybrid fusion at its defaults (vector scores: cosine similarities)."""
    from mainsail.search.service import Ranking, fuse_scores

    rankings = {
        "keyword": Ranking(keyword),
        "vector": Ranking([(chunk, 1.0 - similarity) for chunk, similarity in vector]),
    }
    return [chunk for chunk, _, _ in fuse_scores(rankings, KEYWORD_WEIGHT)]


def to_documents(ranking: Sequence[int], docs: list[str]) -> list[str]:
    return list(dict.fromkeys(docs[chunk] for chunk in ranking))


def evaluate(
    dataset: rq.Dataset,
    chunks: Chunks,
    embed: EmbeddingCache,
    lexemes: Lexemes,
    query_vectors: np.ndarray,
    query_terms: list[dict[str, int]],
    contextual: bool = False,
) -> dict[str, tuple[float, float, float]]:
    """mode -> (nDCG@10, Recall@100, title-only share of the first 10 chunks). With
    ``contextual``, each chunk is embedded with its heading path ahead of its text (unless
    the text starts with that heading already); keyword search reads the stored text."""
    texts = chunks.texts
    if contextual:
        texts = [
            text if not path or text.startswith(path[-1]) else "\n\n".join([*path, text])
            for text, path in zip(chunks.texts, chunks.headings, strict=True)
        ]
    vectors = embed(texts)
    bm25 = BM25(lexemes(chunks.texts), chunks.tokens)
    rankings: dict[str, dict[str, list[int]]] = {mode: {} for mode in MODES}
    similarities = query_vectors @ vectors.T
    for row, query_id in enumerate(dataset.queries):
        order = np.argsort(-similarities[row], kind="stable")[:POOL]
        vector = [(int(chunk), float(similarities[row, chunk])) for chunk in order]
        keyword = bm25.scored(query_terms[row], POOL)
        rankings["vector"][query_id] = [chunk for chunk, _ in vector]
        rankings["keyword"][query_id] = [chunk for chunk, _ in keyword]
        rankings["hybrid"][query_id] = fuse(keyword, vector)
    out: dict[str, tuple[float, float, float]] = {}
    for mode in MODES:
        documents = {q: to_documents(r, chunks.docs) for q, r in rankings[mode].items()}
        ndcg, recall = rq.scores(documents, dataset)
        flags = [chunks.title_only[c] for r in rankings[mode].values() for c in r[:10]]
        out[mode] = (ndcg, recall, sum(flags) / max(len(flags), 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="scifact,squad")
    parser.add_argument("--against", metavar="REV", help="also the chunker of this git revision")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help='upload titled documents as Markdown ("# title"): the title becomes a heading',
    )
    parser.add_argument(
        "--contextual",
        action="store_true",
        help="also: the working tree's chunks embedded with their heading path ahead",
    )
    args = parser.parse_args()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)

    from mainsail.embeddings.local import load_local_embedder

    settings = rq.ingest.mainsail_settings()
    embedder = load_local_embedder(rq.MODEL_CACHE)
    embed = EmbeddingCache(embedder.embed, embedder.name)
    modules = {"working tree": load_chunker_module(None)}
    if args.against:
        modules[args.against] = load_chunker_module(args.against)
    chunkers = {
        label: module.Chunker(
            embedder.tokenizer,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
        )
        for label, module in modules.items()
    }
    lexemes = Lexemes()
    lines = [
        f"chunk size {settings.chunk_size}, overlap {settings.chunk_overlap} tokens; "
        f"embedder {embedder.name}; pool {POOL}, score fusion keyword weight "
        f"{KEYWORD_WEIGHT}, BM25 k1 {K1} b {B}",
        "",
        "| dataset | chunker | chunks | first chunk title-only | mode | nDCG@10 | "
        "Recall@100 (pool) | title-only in top 10 |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    try:
        for key in args.datasets.split(","):
            dataset = rq.load_dataset(rq.SPECS[key])
            log(f"{key}: parsing and chunking {len(dataset.corpus):,} documents")
            blocks = list(parsed_blocks(dataset, args.markdown))
            made = make_chunks(dataset, chunkers, blocks)
            query_texts = list(dataset.queries.values())
            query_vectors = embed(query_texts)
            query_terms = lexemes(query_texts)
            runs = [(label, chunks, False) for label, chunks in made.items()]
            if args.contextual:
                runs.insert(1, ("working tree, heading path embedded", made["working tree"], True))
            for label, chunks, contextual in runs:
                first_title = sum(
                    chunks.title_only[i]
                    for i in range(len(chunks.docs))
                    if i == 0 or chunks.docs[i - 1] != chunks.docs[i]
                )
                log(f"{key} / {label}: {len(chunks.texts):,} chunks, ranking")
                results = evaluate(
                    dataset, chunks, embed, lexemes, query_vectors, query_terms, contextual
                )
                for mode, (ndcg, recall, titles) in results.items():
                    lines.append(
                        f"| {key} | {label} | {len(chunks.texts):,} | {first_title:,} | {mode} | "
                        f"{ndcg:.3f} | {recall:.3f} | {titles:.0%} |"
                    )
    finally:
        lexemes.close()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
