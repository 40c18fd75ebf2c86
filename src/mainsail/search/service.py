"""Search: embed the query, run the retrievers, fuse their rankings, cut a page.

Each retriever ranks a fixed pool of candidates (``SEARCH__CANDIDATES``, at least the largest
page); pages are cut from the fused ranking of those pools, so paging through it never
repeats or skips a passage. Vector search is exact when the caller's filtered scope is small
(``exact_below`` chunks) and uses the version's HNSW index otherwise; when the scope filters
drop too many of the index's candidates it asks again with a list ``hnsw_overfetch`` times
longer (up to pgvector's 1000), and ranks the scope exactly if that is still too few.

A query's phrases and exclusions (``query.py``) narrow the vector retriever's scope (a small
narrowed scope is ranked exactly) and filter the keyword retriever's result.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from mainsail.core.cache import ByteCache
from mainsail.core.db import Database
from mainsail.core.errors import NotFound, ServiceUnavailable
from mainsail.core.logging import get_logger
from mainsail.llm.gateway import CallContext
from mainsail.search import repository
from mainsail.search.repository import ActiveVersion, Scope
from mainsail.search.schemas import Filters, Mode, Ranks, SearchHit, SearchIn, SearchOut
from mainsail.settings import SearchSettings

log = get_logger(__name__)

# (embedder name, texts, the caller) -> float32 vectors, L2-normalized. A provider embedder
# bills the caller's budget; the local one ignores it.
EmbedQuery = Callable[[str, Sequence[str], CallContext | None], Awaitable[np.ndarray]]
HnswStatement = Callable[..., Awaitable[list[tuple[int, float]]]]
Strategy = Literal["exact", "hnsw"]
HNSW_EF_MAX = 1000  # pgvector's upper bound for hnsw.ef_search
# Scopes (so versions) above this many chunks take HNSW's one-round-trip statement: sorting
# that many rows costs the planner far more than HNSW_EF_MAX index candidates.
HNSW_PLAN_ROWS = 20_000
STATS_TTL_S = 60.0
# Scope figures that took this long to count are refreshed in the background when stale.
SLOW_FIGURES_S = 0.02
# How long the list of common lexemes (from ANALYZE's statistics) is kept.
COMMON_TTL_S = 600.0
# Search settings that check requests or run the cache and the quality gate: every other one
# shapes answers, so it is part of a cached answer's key.
_NOT_RANKING = {
    "max_query_chars",
    "cache_url",
    "cache_ttl_s",
    "cache_max_entries",
    "eval_set",
    "eval_margin",
}


@dataclass(frozen=True, slots=True)
class Ranking:
    """One retriever's candidates, best first: (chunk id, its own score)."""

    hits: list[tuple[int, float]]
    strategy: Strategy | None = None
    # Ranked with scope figures of an earlier corpus stamp (being counted again).
    stale: bool = False


Figures = tuple[int, float]


@dataclass(slots=True)
class _Figure:
    stamp: str  # the owner's corpus stamp it was counted at
    expires: float
    value: Figures
    cost_s: float  # how long counting it took


@dataclass
class _FiguresCache:
    """Figures of a scope (its size; BM25's chunk count and mean length): counting a large
    scope costs more than the rest of a query (0.4 s at a million chunks).

    A figure is exact for the owner's corpus stamp and kept up to ``STATS_TTL_S``. Once the
    stamp has moved on (an upload, a delete) or the figure is old, one that was cheap to count
    is counted again before the query (as is an empty scope's); one that took
    ``SLOW_FIGURES_S`` or more is served as
    it was while a single background count replaces it: after an upload a large scope's
    figures differ by that document's chunks, not worth every query waiting 0.4 s for."""

    entries: dict[str, _Figure] = field(default_factory=dict)
    refreshing: dict[str, asyncio.Task[Figures]] = field(default_factory=dict)

    async def get(
        self, key: str, stamp: str, count: Callable[[], Awaitable[Figures]]
    ) -> tuple[Figures, bool]:
        """The figures, and whether they are stale (of an earlier stamp)."""
        entry = self.entries.get(key)
        if entry is not None and entry.stamp == stamp and entry.expires >= time.monotonic():
            return entry.value, False
        # An empty scope is counted again before the query too: served stale, it would hide
        # every passage written into the scope since.
        if entry is None or entry.cost_s < SLOW_FIGURES_S or not entry.value[0]:
            return await self._count(key, stamp, count), False
        if key not in self.refreshing:
            task = asyncio.create_task(self._count(key, stamp, count))
            self.refreshing[key] = task
            task.add_done_callback(lambda done: self._refreshed(key, done))
        return entry.value, entry.stamp != stamp

    async def _count(
        self, key: str, stamp: str, count: Callable[[], Awaitable[Figures]]
    ) -> Figures:
        started = time.monotonic()
        value = await count()
        now = time.monotonic()
        if len(self.entries) >= 4096 and key not in self.entries:
            self.entries.clear()
        self.entries[key] = _Figure(stamp, now + STATS_TTL_S, value, now - started)
        return value

    def _refreshed(self, key: str, task: asyncio.Task[Figures]) -> None:
        self.refreshing.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # The stale figure stays; the next query tries again.
            log.warning("search_figures_refresh_failed", error=repr(task.exception()))

    async def aclose(self) -> None:
        tasks = list(self.refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def fuse(rankings: dict[str, Ranking], k: int) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal Rank Fusion: each passage scores sum(1 / (k + rank)) over the retrievers
    that ranked it; ties go to the lower chunk id, so the order is total and stable."""
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ranking in rankings.items():
        for rank, (chunk_id, _) in enumerate(ranking.hits, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(chunk_id, {})[name] = rank
    return _ordered(scores, ranks)


def fuse_scores(
    rankings: dict[str, Ranking], keyword_weight: float
) -> list[tuple[int, float, dict[str, int]]]:
    """Score fusion: each retriever's scores (cosine similarity; BM25) scaled to [0, 1] over
    its own candidates, best 1 and last 0, and mixed ``keyword_weight`` : 1 - keyword_weight;
    a passage one retriever did not return takes 0 from it. Unlike rank fusion it keeps how far
    ahead a retriever's best passages are: a keyword match far above the rest (a question
    that shares rare words with its answer) is not pulled down to the vector ranking's view.
    Ties go to the lower chunk id."""
    weights = {"keyword": keyword_weight, "vector": 1.0 - keyword_weight}
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ranking in rankings.items():
        # Vector hits carry cosine distances (smaller is better), keyword hits BM25 scores.
        values = [1.0 - v if name == "vector" else v for _, v in ranking.hits]
        best, last = (max(values), min(values)) if values else (0.0, 0.0)
        span = best - last
        weight = weights[name]
        for rank, ((chunk_id, _), value) in enumerate(zip(ranking.hits, values, strict=True), 1):
            scaled = (value - last) / span if span > 0 else 1.0
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight * scaled
            ranks.setdefault(chunk_id, {})[name] = rank
    return _ordered(scores, ranks)


def _ordered(
    scores: dict[int, float], ranks: dict[int, dict[str, int]]
) -> list[tuple[int, float, dict[str, int]]]:
    order = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))
    return [(chunk_id, scores[chunk_id], ranks[chunk_id]) for chunk_id in order]


class Searcher:
    def __init__(
        self,
        db: Database,
        settings: SearchSettings,
        embed: EmbedQuery,
        cache: ByteCache | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        # The settings that rank are part of a cached answer: the cache is shared by every
        # process (Redis) and outlives a restart, which may rank otherwise (fusion, weights).
        # Serialized once: it is the same for every request.
        self._ranking = json.dumps(
            settings.model_dump(mode="json", exclude=_NOT_RANKING),
            sort_keys=True,
            separators=(",", ":"),
        )
        self.embed = embed
        self.cache = cache
        self._figures = _FiguresCache()
        self._common: tuple[float, dict[str, float]] | None = None

    async def aclose(self) -> None:
        """Stop background counts (at shutdown, before the database goes)."""
        await self._figures.aclose()

    @property
    def pool(self) -> int:
        return max(self.settings.candidates, self.settings.max_top_k)

    async def search(
        self,
        owner_id: uuid.UUID,
        request: SearchIn,
        *,
        version_id: int | None = None,
        ctx: CallContext | None = None,
    ) -> SearchOut:
        """``version_id``: a built but not yet active version (admins comparing versions);
        by default the active one. ``ctx``: who a provider embedder's call is billed to."""
        async with self.db.autocommit() as connection:
            version = await repository.active_version(connection, owner_id, version_id)
        if version is None and version_id is not None:  # a typo, or a retired version
            raise NotFound(f"Index version {version_id} is not ready or active.")
        if version is None:
            return SearchOut(
                results=[],
                mode=request.mode,
                index_version=None,
                offset=request.offset,
                next_offset=None,
            )
        key = self._cache_key(version, owner_id, request)
        if self.cache is not None:
            raw = await self.cache.get(key)
            if raw is not None:
                return SearchOut.model_validate_json(raw).model_copy(update={"cached": True})
        result, stale = await self._search(version, owner_id, request, ctx)
        if self.cache is not None and not stale:  # a stale answer is not kept past its query
            await self.cache.set(key, result.model_dump_json().encode(), self.settings.cache_ttl_s)
        return result

    async def holds_any(self, owner_id: uuid.UUID, filters: Filters | None) -> bool:
        """Whether the owner's passages in the active version include any ``filters`` select
        (all of them without): one indexed probe, no query embedded."""
        async with self.db.autocommit() as connection:
            version = await repository.active_version(connection, owner_id)
            if version is None:
                return False
            where = repository.scope(version.id, owner_id, filters or Filters())
            return await repository.count_scope(connection, where, cap=0) > 0

    def _cache_key(self, version: ActiveVersion, owner_id: uuid.UUID, request: SearchIn) -> str:
        material = json.dumps(
            [
                version.id,
                version.corpus_stamp,
                str(owner_id),
                request.model_dump(mode="json"),
                self._ranking,
            ],
            sort_keys=True,
            separators=(",", ":"),
        )
        return "search:" + hashlib.sha256(material.encode()).hexdigest()

    async def _search(
        self,
        version: ActiveVersion,
        owner_id: uuid.UUID,
        request: SearchIn,
        ctx: CallContext | None,
    ) -> tuple[SearchOut, bool]:
        """The page, and whether a retriever ranked with stale scope figures."""
        where = repository.scope(version.id, owner_id, request.filters)
        parsed = request.parsed()
        constraint = parsed.constraint
        if constraint is not None:
            async with self.db.autocommit() as connection:
                if not await repository.constrains(connection, constraint):
                    constraint = None
        retrievers: dict[str, Awaitable[Ranking]] = {}
        if request.mode in ("hybrid", "vector"):
            narrowed = where.matching(constraint) if constraint else where
            retrievers["vector"] = self._vector(version, narrowed, parsed.text, ctx)
        if request.mode in ("hybrid", "keyword"):
            retrievers["keyword"] = self._keyword(version, where, parsed.text, constraint)
        rankings = dict(zip(retrievers, await asyncio.gather(*retrievers.values()), strict=True))
        ordered = self._order(request.mode, rankings)
        end = request.offset + request.top_k
        page = ordered[request.offset : end]
        async with self.db.autocommit() as connection:
            rows = await repository.passages(connection, [hit[0] for hit in page], owner_id)
        results = [
            _hit(rows[chunk_id], score, ranks)
            for chunk_id, score, ranks in page
            if chunk_id in rows  # deleted between the two statements
        ]
        vector = rankings.get("vector")
        stale = any(ranking.stale for ranking in rankings.values())
        return SearchOut(
            results=results,
            mode=request.mode,
            index_version=version.id,
            offset=request.offset,
            next_offset=end if end < len(ordered) else None,
            vector_strategy=vector.strategy if vector else None,
        ), stale

    def _order(
        self, mode: Mode, rankings: dict[str, Ranking]
    ) -> list[tuple[int, float, dict[str, int]]]:
        if mode == "hybrid":
            if self.settings.fusion == "rrf":
                return fuse(rankings, self.settings.rrf_k)
            return fuse_scores(rankings, self.settings.keyword_weight)
        ((name, ranking),) = rankings.items()
        return [
            (chunk_id, 1.0 - value if name == "vector" else value, {name: rank})
            for rank, (chunk_id, value) in enumerate(ranking.hits, start=1)
        ]

    async def _vector(
        self, version: ActiveVersion, where: Scope, query: str, ctx: CallContext | None
    ) -> Ranking:
        pool = self.pool
        # Counted exactly up to the cap (cap + 1 means "more"): enough to choose exact search,
        # and to know the scope (so the version) is too large for the planner to sort.
        cap = max(self.settings.exact_below, pool, HNSW_PLAN_ROWS)

        async def count() -> Figures:
            async with self.db.autocommit() as connection:
                return (await repository.count_scope(connection, where, cap=cap), 0.0)

        # A stale count only picks the strategy (each falls back when it finds too few), so
        # the ranking is exact either way; it is not taken for the scope's size, which would
        # make too few HNSW rows look like all of a scope that has grown since.
        (counted, _), stale = await self._figures.get(
            self._scope_key("count", version, where, cap), version.corpus_stamp, count
        )
        in_scope = int(counted)
        scope_size = None if stale else in_scope
        if scope_size == 0:  # nothing to rank: the query is not embedded (a provider bills it)
            return Ranking([], "exact")
        vector = (await self.embed(version.embedder, [query], ctx))[0]
        if len(vector) != version.dimension:  # the catalogue entry changed since the build
            raise ServiceUnavailable(
                f"Index version {version.id} holds vectors of {version.dimension} dimensions, "
                f"but its embedder {version.embedder} now makes {len(vector)}: build a new "
                "index version with it, or restore its catalogue entry."
            )
        async with self.db.autocommit() as connection:
            if in_scope <= self.settings.exact_below:
                return Ranking(
                    await repository.vector_exact(connection, where, vector, pool), "exact"
                )
            if in_scope > HNSW_PLAN_ROWS:
                # One round trip: the session keeps ef_search, the statement needs no
                # enable_sort = off at this size.
                found = await self._hnsw(
                    repository.vector_hnsw_session, connection, version, where, vector, scope_size
                )
                if found is not None:
                    return Ranking(found, "hnsw")
        if in_scope <= HNSW_PLAN_ROWS:
            # A small version: the planner could sort it rather than read the index, so the
            # statement runs in a transaction of its own with enable_sort = off.
            async with self.db.engine.begin() as connection:
                found = await self._hnsw(
                    repository.vector_hnsw, connection, version, where, vector, scope_size
                )
                if found is not None:
                    return Ranking(found, "hnsw")
        # Still too few: rank the scope exactly rather than return too little.
        async with self.db.autocommit() as connection:
            hits = await repository.vector_exact(connection, where, vector, pool)
        return Ranking(hits, "exact")

    async def _hnsw(
        self,
        statement: HnswStatement,
        connection: AsyncConnection,
        version: ActiveVersion,
        where: Scope,
        vector: np.ndarray,
        in_scope: int | None,
    ) -> list[tuple[int, float]] | None:
        """The pool's HNSW candidates, or None when the scope filters left too few even with
        the longest candidate list (the caller then ranks the scope exactly). The candidate
        list covers the pool and does not depend on the page, so every page of a query sees
        the same ranking. ``in_scope``: the scope's size, None when not known for sure."""
        pool = self.pool
        ef = min(HNSW_EF_MAX, max(self.settings.ef_search, pool))
        wanted = pool if in_scope is None else min(pool, in_scope)
        while True:
            hits = await statement(
                connection,
                where,
                vector,
                version_id=version.id,
                dimension=version.dimension,
                limit=pool,
                ef_search=ef,
            )
            wider = min(HNSW_EF_MAX, ef * self.settings.hnsw_overfetch)
            if len(hits) >= wanted or wider <= ef:
                break
            ef = wider  # the scope filters dropped too many: a longer candidate list
        if len(hits) < wanted:
            log.info("search_exact_fallback", returned=len(hits), wanted=wanted)
            return None
        return hits

    @staticmethod
    def _scope_key(kind: str, version: ActiveVersion, where: Scope, *extra: object) -> str:
        """A figure's key: the corpus stamp is kept beside it (``_FiguresCache``)."""
        return json.dumps(
            [kind, version.id, where.where, where.params, *extra],
            sort_keys=True,
            default=str,
        )

    async def _keyword(
        self, version: ActiveVersion, where: Scope, query: str, constraint: str | None
    ) -> Ranking:
        """BM25 over ``where``; the constraint narrows the result, not the statistics."""

        async def count() -> Figures:
            async with self.db.autocommit() as connection:
                return await repository.scope_stats(connection, where)

        (chunks, mean_tokens), stale = await self._figures.get(
            self._scope_key("bm25", version, where), version.corpus_stamp, count
        )
        if chunks == 0:  # never a stale 0 (``_FiguresCache.get``)
            return Ranking([])
        async with self.db.autocommit() as connection:
            hits = await repository.keyword_bm25(
                connection,
                where,
                query,
                chunks=chunks,
                mean_tokens=mean_tokens,
                k1=self.settings.bm25_k1,
                b=self.settings.bm25_b,
                limit=self.pool,
                constraint=constraint,
                common=(
                    await self._common_lexemes(connection)
                    if chunks >= self.settings.common_term_scope
                    else None
                ),
            )
        return Ranking(hits, stale=stale)

    async def _common_lexemes(self, connection: AsyncConnection) -> dict[str, float]:
        """Lexemes in ``common_term_fraction`` of the chunks or more (table-wide statistics,
        which change only with ANALYZE), read again every ``COMMON_TTL_S``."""
        cached = self._common
        if cached is not None and cached[0] >= time.monotonic():
            return cached[1]
        found = await repository.common_lexemes(connection, self.settings.common_term_fraction)
        self._common = (time.monotonic() + COMMON_TTL_S, found)
        return found


def _hit(row: Any, score: float, ranks: dict[str, int]) -> SearchHit:
    metadata = dict(row.metadata or {})
    title = metadata.get("title")
    return SearchHit(
        chunk_id=row.id,
        document_id=row.document_id,
        collection=row.collection,
        title=title if isinstance(title, str) and title else row.filename,
        filename=row.filename,
        ordinal=row.ordinal,
        text=row.text,
        score=score,
        ranks=Ranks(**ranks),
        page=row.page,
        page_end=row.page_end,
        heading=list(row.heading or []),
        char_start=row.char_start,
        char_end=row.char_end,
        metadata=metadata,
    )
