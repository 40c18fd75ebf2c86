"""The SQL of search: the caller's scope, the two retrievers, and the passages of a page.

Every statement reads chunks of one index version, of the caller's documents, of each
document's active revision only: a document being re-ingested shows its old chunks until one
transaction swaps them, never a mix.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from mainsail.search.schemas import Filters

# Stems and stop words of the generated ``chunks.tsv`` column (migration 0008).
TEXT_CONFIG = "english"


@dataclass(frozen=True, slots=True)
class ActiveVersion:
    id: int
    embedder: str
    dimension: int
    # Changes whenever the owner's documents change (upload, new revision, delete): the id
    # of the last transaction that wrote them (``CorpusStamp``), one row read. (Prefixed: the
    # counts migration 0010 kept were another kind of number, in caches that may outlive it.)
    corpus_stamp: str


@dataclass(frozen=True, slots=True)
class Scope:
    """A WHERE clause over ``chunks c JOIN documents d`` and its parameters."""

    where: str
    params: dict[str, Any]

    def matching(self, constraint: str) -> Scope:
        """Only chunks that satisfy a web-search constraint (phrases, exclusions)."""
        return Scope(
            f"{self.where} AND {_CONSTRAINT}",
            {**self.params, "constraint": constraint, "config": TEXT_CONFIG},
        )


# A passage's ``tsvector`` against the query's phrases and exclusions.
_CONSTRAINT = "c.tsv @@ websearch_to_tsquery(CAST(:config AS regconfig), :constraint)"


def _scoped(sql: str, where: Scope) -> TextClause:
    """A statement with the scope's WHERE clause in place of ``{where}``. The clause is made
    of fixed fragments (``scope``); every value in it is a bound parameter."""
    return text(sql.replace("{where}", where.where))


def scope(version_id: int, owner_id: uuid.UUID, filters: Filters) -> Scope:
    clauses = [
        "c.index_version = :version",
        "c.owner_id = :owner",
        "d.owner_id = :owner",
        "c.revision = d.active_revision",
    ]
    params: dict[str, Any] = {"version": version_id, "owner": owner_id}
    if filters.collections is not None:
        clauses.append("c.collection = ANY(CAST(:collections AS text[]))")
        params["collections"] = list(filters.collections)
    if filters.document_ids is not None:
        clauses.append("c.document_id = ANY(CAST(:document_ids AS uuid[]))")
        params["document_ids"] = list(filters.document_ids)
    for i, (key, value) in enumerate(sorted((filters.metadata or {}).items())):
        values = value if isinstance(value, list) else [value]
        # jsonb equality: 2 matches 2.0, "2" does not match 2, true matches only true.
        clauses.append(f"d.metadata -> CAST(:mk{i} AS text) = ANY(CAST(:mv{i} AS jsonb[]))")
        params[f"mk{i}"] = key
        params[f"mv{i}"] = [json.dumps(v) for v in values]
    if filters.created_after is not None:
        clauses.append("d.created_at >= :created_after")
        params["created_after"] = filters.created_after
    if filters.created_before is not None:
        clauses.append("d.created_at < :created_before")
        params["created_before"] = filters.created_before
    return Scope(" AND ".join(clauses), params)


_VERSION = """
    SELECT v.id, v.embedder, v.dimension,
           'x' || coalesce((SELECT written_by FROM corpus_stamps WHERE owner_id = :owner), 0)
               AS stamp
    FROM index_versions v
    """
_ACTIVE = text(_VERSION + "WHERE v.state = 'active'")
_BY_ID = text(_VERSION + "WHERE v.id = :version AND v.state IN ('ready', 'active')")


async def active_version(
    connection: AsyncConnection, owner_id: uuid.UUID, version_id: int | None = None
) -> ActiveVersion | None:
    """The active index version, or the given one if it is built (ready) or active."""
    if version_id is None:
        result = await connection.execute(_ACTIVE, {"owner": owner_id})
    else:
        result = await connection.execute(_BY_ID, {"owner": owner_id, "version": version_id})
    row = result.one_or_none()
    if row is None:
        return None
    return ActiveVersion(int(row.id), row.embedder, int(row.dimension), row.stamp)


async def constrains(connection: AsyncConnection, constraint: str) -> bool:
    """Whether a constraint names any word the full-text index keeps: one of stop words
    alone (``"the"``, ``-a``) matches no passage at all, so it is dropped instead."""
    value = await connection.scalar(
        text("SELECT numnode(websearch_to_tsquery(CAST(:config AS regconfig), :constraint))"),
        {"config": TEXT_CONFIG, "constraint": constraint},
    )
    return bool(value)


async def count_scope(connection: AsyncConnection, where: Scope, *, cap: int) -> int:
    """Chunks in scope, counted up to ``cap + 1`` (enough to choose exact or HNSW)."""
    value = await connection.scalar(
        _scoped(
            """
            SELECT count(*) FROM (
                SELECT 1 FROM chunks c JOIN documents d ON d.id = c.document_id
                WHERE {where} LIMIT :cap
            ) AS s
            """,
            where,
        ),
        {**where.params, "cap": cap + 1},
    )
    return int(value or 0)


_VECTOR_CODEC_KEY = "mainsail.vector_codec"  # the driver sends vector parameters in binary


def _encode_vector(value: np.ndarray) -> bytes:
    """pgvector's binary format: dimensions and a reserved word, then big-endian float32s."""
    values = np.asarray(value, dtype=">f4").ravel()
    return struct.pack(">HH", values.size, 0) + values.tobytes()


def _decode_vector(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


async def use_binary_vectors(connection: AsyncConnection) -> None:
    """Have this pooled connection's driver send ``vector`` parameters in binary, once per
    connection: a 384-d query as text cost ~0.15 ms of Python to write, and parsing in the
    server; as ``real[]``, as much again to encode in the driver (measured; binary is 4 bytes
    a value and nothing to parse). The type is looked up as the statements name it (the
    search path), so an extension installed in another schema works too."""
    if connection.info.get(_VECTOR_CODEC_KEY):
        return
    schema = await connection.scalar(
        text(
            "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE t.oid = to_regtype('vector')"
        )
    )
    if schema is None:
        raise RuntimeError("the vector type is missing: is the pgvector extension installed?")
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:  # pragma: no cover - a checked-out connection has its driver's
        raise RuntimeError("the pooled connection has no driver connection")
    await driver.set_type_codec(
        "vector",
        schema=schema,
        encoder=_encode_vector,
        decoder=_decode_vector,
        format="binary",
    )
    connection.info[_VECTOR_CODEC_KEY] = True


def _query_vector(dimension: int) -> str:
    """The ``:query`` parameter as a ``vector`` of the version's dimension."""
    return f"CAST(:query AS vector({int(dimension)}))"


async def vector_exact(
    connection: AsyncConnection, where: Scope, query: np.ndarray, limit: int
) -> list[tuple[int, float]]:
    """(chunk id, cosine distance), nearest first, over every chunk in scope."""
    await use_binary_vectors(connection)
    rows = await connection.execute(
        _scoped(
            """
            SELECT c.id, c.embedding <=> CAST(:query AS vector) AS distance
            FROM chunks c JOIN documents d ON d.id = c.document_id
            WHERE {where}
            ORDER BY distance, c.id
            LIMIT :limit
            """,
            where,
        ),
        {**where.params, "query": query, "limit": limit},
    )
    return [(int(r.id), float(r.distance)) for r in rows]


async def vector_hnsw(
    connection: AsyncConnection,
    where: Scope,
    query: np.ndarray,
    *,
    version_id: int,
    dimension: int,
    limit: int,
    ef_search: int,
) -> list[tuple[int, float]]:
    """The version's HNSW index (its expression and partial predicate must match the
    index's: ``embedding::vector(dim)``, ``index_version = n``); scope filters apply to what
    the index returns, so fewer than ``limit`` rows come back when they drop many.

    Call it inside a transaction: ``ef_search`` is set for that transaction only."""
    await use_binary_vectors(connection)
    # One round trip for both, for this transaction only. enable_sort off: the caller chose
    # the index (the scope is large), so the planner must not sort the scope instead.
    await connection.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true), set_config('enable_sort', 'off', true)"
        ),
        {"ef": str(int(ef_search))},
    )
    # The version as a literal: the partial index's predicate must be provable from the
    # statement itself, or a cached generic plan could not use the index.
    where = Scope(
        where.where.replace("c.index_version = :version", f"c.index_version = {int(version_id)}"),
        where.params,
    )
    rows = await connection.execute(
        _scoped(
            """
            SELECT c.id,
                   (c.embedding::vector({dim})) <=> {query}
                       AS distance
            FROM chunks c JOIN documents d ON d.id = c.document_id
            WHERE {where}
            ORDER BY (c.embedding::vector({dim})) <=> {query}
            LIMIT :limit
            """.replace("{query}", _query_vector(dimension)).replace("{dim}", str(int(dimension))),
            where,
        ),
        {**where.params, "query": query, "limit": limit},
    )
    hits = [(int(r.id), float(r.distance)) for r in rows]
    # Equal distances come back in index order: make the order stable.
    return sorted(hits, key=lambda hit: (hit[1], hit[0]))


_EF_KEY = "mainsail.hnsw.ef_search"  # the session value set on a pooled connection


async def vector_hnsw_session(
    connection: AsyncConnection,
    where: Scope,
    query: np.ndarray,
    *,
    version_id: int,
    dimension: int,
    limit: int,
    ef_search: int,
) -> list[tuple[int, float]]:
    """What ``vector_hnsw`` returns, in one round trip on an autocommit connection, for
    versions too large for the planner ever to sort them (the caller's check).

    ``hnsw.ef_search`` is kept at session level on the pooled connection and set only when it
    differs (it steers HNSW scans alone, which only search runs). The index's ``ef_search``
    candidates are taken in a subquery of their own that reads the version alone, so the
    planner's only other plan sorts the whole version: no ``enable_sort = off`` (a setting
    other statements on the connection must not inherit) is needed. The scope filters apply
    to those candidates, as they do in ``vector_hnsw`` (pgvector returns at most
    ``ef_search`` rows from an index scan)."""
    await use_binary_vectors(connection)
    ef = int(ef_search)
    if connection.info.get(_EF_KEY) != ef:
        connection.info.pop(_EF_KEY, None)
        await connection.execute(
            text("SELECT set_config('hnsw.ef_search', :ef, false)"), {"ef": str(ef)}
        )
        connection.info[_EF_KEY] = ef
    where = Scope(where.where.replace("c.index_version = :version", "true"), where.params)
    # Integers are written in: the version must be, for the partial index's predicate; ef and
    # the limit make a generic plan as good as a custom one.
    rows = await connection.execute(
        _scoped(
            """
            SELECT c.id, c.distance
            FROM (
                SELECT c.id, c.document_id, c.revision, c.owner_id, c.collection, c.tsv,
                       (c.embedding::vector({dim})) <=> {query}
                           AS distance
                FROM chunks c
                WHERE c.index_version = {version}
                ORDER BY (c.embedding::vector({dim})) <=> {query}
                LIMIT {ef}
            ) AS c JOIN documents d ON d.id = c.document_id
            WHERE {where}
            ORDER BY c.distance, c.id
            LIMIT {limit}
            """.replace("{query}", _query_vector(dimension))
            .replace("{dim}", str(int(dimension)))
            .replace("{version}", str(int(version_id)))
            .replace("{ef}", str(ef))
            .replace("{limit}", str(int(limit))),
            where,
        ),
        {**where.params, "query": query},
    )
    return [(int(r.id), float(r.distance)) for r in rows]


async def scope_stats(connection: AsyncConnection, where: Scope) -> tuple[int, float]:
    """(chunks in scope, their mean length in tokens), for BM25."""
    row = (
        await connection.execute(
            _scoped(
                """
                SELECT count(*) AS n, coalesce(avg(c.token_count), 1) AS mean
                FROM chunks c JOIN documents d ON d.id = c.document_id
                WHERE {where}
                """,
                where,
            ),
            where.params,
        )
    ).one()
    return int(row.n), float(row.mean)


_COMMON_LEXEMES = text(
    """
    SELECT e.lexeme, e.freq
    FROM pg_stats s,
         unnest(CAST(CAST(s.most_common_elems AS text) AS text[]), s.most_common_elem_freqs)
             AS e(lexeme, freq)
    WHERE s.schemaname = current_schema() AND s.tablename = 'chunks' AND s.attname = 'tsv'
      AND e.lexeme IS NOT NULL AND e.freq >= :fraction
    """
)


async def common_lexemes(connection: AsyncConnection, fraction: float) -> dict[str, float]:
    """Lexemes of ``chunks.tsv`` in at least ``fraction`` of its rows, with that fraction, by
    ANALYZE's statistics of the column (its most common elements; none before the first
    ANALYZE)."""
    rows = await connection.execute(_COMMON_LEXEMES, {"fraction": fraction})
    return {str(row.lexeme): float(row.freq) for row in rows}


# The query's common lexemes (given), and those that find passages: the rest, or the least
# common one when every lexeme is common.
_FINDING_COMMON = """
    common AS (
        SELECT e.lexeme, e.freq
        FROM unnest(CAST(:common_lexemes AS text[]), CAST(:common_freqs AS float8[]))
            AS e(lexeme, freq)
        WHERE e.lexeme IN (SELECT unnest(lexemes) FROM terms)
    ),
    finding AS (
        SELECT coalesce(
            (SELECT array_agg(l) FROM unnest((SELECT lexemes FROM terms)) AS l
             WHERE l NOT IN (SELECT lexeme FROM common)),
            (SELECT ARRAY[lexeme] FROM common ORDER BY freq, lexeme LIMIT 1)
        ) AS lexemes
    ),
"""
_FINDING_ALL = """
    finding AS (SELECT lexemes FROM terms),
"""
# Document frequency: counted over the matches for the lexemes that find them; estimated from
# the statistics for common ones that do not.
_DF_COUNTED = "SELECT lexeme, CAST(count(*) AS float8) AS df FROM tf GROUP BY lexeme"
_DF_ESTIMATED = """
    SELECT lexeme, CAST(count(*) AS float8) AS df FROM tf
    WHERE lexeme IN (SELECT unnest(lexemes) FROM finding) GROUP BY lexeme
    UNION ALL
    SELECT lexeme, greatest(freq * CAST(:n AS float8), 1) FROM common
    WHERE lexeme NOT IN (SELECT unnest(lexemes) FROM finding)
"""


async def keyword_bm25(
    connection: AsyncConnection,
    where: Scope,
    query: str,
    *,
    chunks: int,
    mean_tokens: float,
    k1: float,
    b: float,
    limit: int,
    constraint: str | None = None,
    common: Mapping[str, float] | None = None,
) -> list[tuple[int, float]]:
    """(chunk id, BM25 score), best first. Any query term may match (OR): a question's words
    rarely all occur in one passage. Document frequencies are counted in the caller's scope,
    so another tenant's documents do not shape the scores, except through ``common`` (below:
    table-wide statistics, in large scopes only). A ``constraint`` (phrases,
    exclusions) removes passages from the result, not from the frequencies: a passage scores
    the same with or without it. Each match's ``tsvector`` is cut down to the query's lexemes
    in C (``setweight`` marks them, ``ts_filter`` keeps them; the stored vectors carry the
    default weight D) before it is unnested: unnesting whole vectors made a row per lexeme of
    every matching passage, several times the work of the rest. One materialized step from
    match to (passage, lexeme, tf) rows: a step in between cost a tenth of the statement.

    ``common`` (large scopes; ``common_lexemes``: lexeme -> fraction of the rows): the query's
    lexemes among them find no passages themselves unless every query lexeme is common (then
    the least common one does). They still score in the passages the others find, with their
    document frequency estimated as their fraction of ``chunks``: the statement's cost follows
    the rarer words' matches, not a common word's."""
    rows = await connection.execute(
        _scoped(
            """
            WITH terms AS (
                SELECT array_agg(DISTINCT u.lexeme) AS lexemes
                FROM unnest(to_tsvector(CAST(:config AS regconfig), :query)) AS u
                WHERE u.lexeme !~ '[\\\\]'
            ),
            {finding}
            tf AS MATERIALIZED (
                SELECT c.id, c.token_count, {kept} AS kept, u.lexeme,
                       coalesce(array_length(u.positions, 1), 1) AS tf
                FROM chunks c JOIN documents d ON d.id = c.document_id,
                     unnest(
                         ts_filter(setweight(c.tsv, 'A', (SELECT lexemes FROM terms)), '{a}')
                     ) AS u
                WHERE {where}
                  AND c.tsv @@ (
                      SELECT CAST(string_agg(quote_literal(l), ' | ') AS tsquery)
                      FROM unnest((SELECT lexemes FROM finding)) AS l
                  )
            ),
            df AS ({df})
            SELECT tf.id,
                   sum(
                       ln(1 + (CAST(:n AS float8) - df.df + 0.5) / (df.df + 0.5))
                       * tf.tf * (CAST(:k1 AS float8) + 1)
                       / (tf.tf + CAST(:k1 AS float8) * (1 - CAST(:b AS float8)
                          + CAST(:b AS float8) * tf.token_count / CAST(:mean AS float8)))
                   ) AS score
            FROM tf JOIN df USING (lexeme)
            WHERE tf.kept
            GROUP BY tf.id
            ORDER BY score DESC, tf.id
            LIMIT :limit
            """.replace("{kept}", _CONSTRAINT if constraint else "true")
            .replace("{finding}", _FINDING_COMMON if common else _FINDING_ALL)
            .replace("{df}", _DF_ESTIMATED if common else _DF_COUNTED),
            where,
        ),
        {
            **where.params,
            **({"constraint": constraint} if constraint else {}),
            **(
                {"common_lexemes": list(common), "common_freqs": list(common.values())}
                if common
                else {}
            ),
            "query": query,
            "config": TEXT_CONFIG,
            "n": float(chunks),
            "mean": max(float(mean_tokens), 1.0),
            "k1": float(k1),
            "b": float(b),
            "limit": limit,
        },
    )
    return [(int(r.id), float(r.score)) for r in rows]


_PASSAGES = text(
    """
    SELECT c.id, c.document_id, c.collection, c.ordinal, c.text, c.page, c.page_end,
           c.heading, c.char_start, c.char_end, d.filename, d.metadata
    FROM chunks c JOIN documents d ON d.id = c.document_id
    WHERE c.id = ANY(CAST(:ids AS bigint[])) AND c.owner_id = :owner
    """
)


async def passages(
    connection: AsyncConnection, ids: list[int], owner_id: uuid.UUID
) -> dict[int, Any]:
    if not ids:
        return {}
    rows = await connection.execute(_PASSAGES, {"ids": ids, "owner": owner_id})
    return {int(row.id): row for row in rows}
