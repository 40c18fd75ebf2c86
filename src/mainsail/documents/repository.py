"""Statements over documents, chunks and index versions."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mainsail.core.db import utcnow
from mainsail.core.migrations import RUNTIME_INDEX_PREFIX
from mainsail.core.principal import Principal
from mainsail.documents.models import (
    ACTIVE,
    BUILDING,
    PROCESSING,
    READY,
    READY_TO_ACTIVATE,
    Chunk,
    Document,
    IndexVersion,
)

# Versions that receive every newly ingested revision: the active one, one being built, and
# built ones not yet retired (searchable by admins, and ready to be switched back to).
LIVE_STATES = (ACTIVE, BUILDING, READY_TO_ACTIVATE)
_VERSIONS_LOCK = "SELECT pg_advisory_xact_lock{shared}(hashtext('mainsail.index_versions'))"


async def lock_versions(session: AsyncSession, *, shared: bool) -> None:
    """Orders version changes against ingestion, for the rest of the transaction.

    Creating or activating a version takes it exclusively; an ingestion job takes it shared
    while it checks it wrote every live version and activates its revision. So either the
    job sees the new version (and writes it too), or its revision is active before the new
    version's build lists the documents to copy: none is missed.
    """
    await session.execute(text(_VERSIONS_LOCK.format(shared="_shared" if shared else "")))


async def live_versions(session: AsyncSession) -> list[IndexVersion]:
    """The versions ingestion writes: the active one first, then the others by id."""
    rows = await session.scalars(
        select(IndexVersion)
        .where(IndexVersion.state.in_(LIVE_STATES))
        .order_by((IndexVersion.state == ACTIVE).desc(), IndexVersion.id)
    )
    return list(rows)


async def ensure_index_version(
    session: AsyncSession,
    *,
    embedder: str,
    dimension: int,
    chunk_size: int,
    chunk_overlap: int,
    vector_index: bool = True,
) -> IndexVersion:
    """The active version; the first one is made from the given values (with its HNSW index
    if ``vector_index``; else the index is built once the version is large enough to use it,
    ``vector_index_wanted``)."""
    version = await session.scalar(select(IndexVersion).where(IndexVersion.state == ACTIVE))
    if version is not None:
        return version
    await lock_versions(session, shared=False)
    version = await session.scalar(select(IndexVersion).where(IndexVersion.state == ACTIVE))
    if version is None:
        version = IndexVersion(
            embedder=embedder,
            dimension=dimension,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            state=ACTIVE,
            activated_at=utcnow(),
        )
        session.add(version)
        await session.flush()
        # No chunks belong to it yet, so this is instant (later versions build theirs
        # CONCURRENTLY once their chunks are written). An index of that name is a leftover of
        # a version whose row is gone (the id sequence was reset): it may be of another
        # dimension, so it goes first.
        await session.execute(text(f"DROP INDEX IF EXISTS {vector_index_name(version.id)}"))
        if vector_index:
            await session.execute(text(vector_index_ddl(version.id, version.dimension)))
    return version


async def vector_index_wanted(connection: AsyncConnection, version_id: int, above: int) -> bool:
    """Whether the version holds more than ``above`` chunks (counted up to that), the size
    from which searches of it may use its HNSW index; below it every search is exact."""
    count = await connection.scalar(
        text("SELECT count(*) FROM (SELECT 1 FROM chunks WHERE index_version = :v LIMIT :cap) s"),
        {"v": version_id, "cap": above + 1},
    )
    return int(count or 0) > above


async def vector_index_exists(connection: AsyncConnection, version_id: int) -> bool:
    found = await connection.scalar(
        text("SELECT to_regclass(:n) IS NOT NULL"), {"n": vector_index_name(version_id)}
    )
    return bool(found)


async def build_vector_index(connection: AsyncConnection, version_id: int, dimension: int) -> None:
    """The version's HNSW index, built without blocking reads or writes of the table (on an
    autocommit connection); an invalid one left by an interrupted build is dropped first.
    Another session building it already: nothing to do here (a session advisory lock)."""
    name = vector_index_name(version_id)
    locked = await connection.scalar(text("SELECT pg_try_advisory_lock(hashtext(:n))"), {"n": name})
    if not locked:
        return
    await connection.execute(text("SET statement_timeout = 0"))
    try:
        valid = await connection.scalar(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
            {"n": name},
        )
        if valid is False:
            await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        if valid is not True:
            await connection.execute(
                text(vector_index_ddl(version_id, dimension, concurrently=True))
            )
    finally:
        await connection.execute(text("RESET statement_timeout"))
        await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": name})


def vector_index_name(version_id: int) -> str:
    return f"{RUNTIME_INDEX_PREFIX}{int(version_id)}"


def vector_index_ddl(version_id: int, dimension: int, *, concurrently: bool = False) -> str:
    """The HNSW (cosine) index over one version's chunks: a partial index on the embedding
    cast to the version's dimension, so versions of different models share the table."""
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
        f"{vector_index_name(version_id)} ON chunks "
        f"USING hnsw ((embedding::vector({int(dimension)})) vector_cosine_ops) "
        f"WHERE index_version = {int(version_id)}"
    )


async def find_same_bytes(
    session: AsyncSession,
    owner_id: uuid.UUID,
    collection: str,
    sha256: str,
    *,
    prefer: str | None = None,
) -> Document | None:
    """The owner's document of these bytes in the collection (the one named ``prefer`` if it
    is one of several, else the oldest named one). Uploads of the same bytes wait
    for each other here until the transaction ends (an advisory lock on owner, collection and
    hash), so two at once make one document, not two. The row found is locked against a
    delete (``FOR KEY SHARE``): one being deleted is waited for and then not found, instead
    of being answered as the upload's document."""
    key = f"documents:{owner_id}:{collection}:{sha256}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
    return await session.scalar(
        select(Document)
        .where(
            Document.owner_id == owner_id,
            Document.collection == collection,
            Document.sha256 == sha256,
        )
        .order_by((Document.filename == prefer).desc().nulls_last(), Document.created_at)
        .limit(1)
        .with_for_update(read=True, key_share=True)
    )


async def find_by_name(
    session: AsyncSession, owner_id: uuid.UUID, collection: str, filename: str, *, lock: bool
) -> Document | None:
    statement = select(Document).where(
        Document.owner_id == owner_id,
        Document.collection == collection,
        Document.filename == filename,
    )
    if lock:
        # FOR NO KEY UPDATE: a revision changes no key, and it must not conflict with the
        # FOR KEY SHARE of a same-bytes lookup (two files swapping their bytes at once would
        # deadlock); two revisions of one name still wait for each other.
        statement = statement.with_for_update(key_share=True)
    return await session.scalar(statement)


async def get_readable(
    session: AsyncSession, principal: Principal, document_id: uuid.UUID, *, lock: bool = False
) -> Document | None:
    statement = select(Document).where(Document.id == document_id)
    if not principal.is_admin:
        statement = statement.where(Document.owner_id == principal.user_id)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def list_readable(
    session: AsyncSession,
    principal: Principal,
    *,
    collection: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Document], int]:
    conditions: list[Any] = []
    if not principal.is_admin:
        conditions.append(Document.owner_id == principal.user_id)
    if collection is not None:
        conditions.append(Document.collection == collection)
    if status is not None:
        conditions.append(Document.status == status)
    total = await session.scalar(select(func.count()).select_from(Document).where(*conditions))
    rows = await session.scalars(
        select(Document)
        .where(*conditions)
        .order_by(Document.created_at.desc(), Document.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), int(total or 0)


async def claim_for_ingest(
    session: AsyncSession, document_id: uuid.UUID, revision: int
) -> Document | None:
    """The document, marked processing, if this revision is still its latest. A revision an
    earlier run made ready stays ready (its status is not touched)."""
    document = await session.get(Document, document_id, with_for_update=True)
    if document is None or document.revision != revision:
        return None
    if document.active_revision == revision and document.status == READY:
        return document
    document.status, document.error = PROCESSING, None
    await session.flush()
    return document


async def max_ordinal(
    connection: AsyncConnection, document_id: uuid.UUID, index_version: int, revision: int
) -> int:
    value = await connection.scalar(
        select(func.max(Chunk.ordinal)).where(
            Chunk.document_id == document_id,
            Chunk.index_version == index_version,
            Chunk.revision == revision,
        )
    )
    return -1 if value is None else int(value)


async def drop_revision_chunks(
    session: AsyncSession, document_id: uuid.UUID, revision: int, version_ids: list[int]
) -> None:
    """A revision's chunks in versions retired while it was written."""
    await session.execute(
        delete(Chunk).where(
            Chunk.document_id == document_id,
            Chunk.revision == revision,
            Chunk.index_version.in_(version_ids),
        )
    )


# At most this many skipped documents are listed on a version's progress.
MAX_REPORTED_ERRORS = 20


async def note_version_miss(
    session: AsyncSession, version_id: int, document_id: uuid.UUID, revision: int, reason: str
) -> None:
    """A revision that an index version not yet searched could not take (its embedder's
    provider down, the owner's budget spent): what part of it was written there goes, so the
    version holds all of it or none (a build still running lists it as missing and copies it
    again at its end), and it is listed on the version, as a build lists what it skips."""
    await drop_revision_chunks(session, document_id, revision, [version_id])
    await session.execute(
        text(
            """
            UPDATE index_versions SET progress = jsonb_set(
                jsonb_set(progress, '{skipped}',
                          to_jsonb(coalesce((progress ->> 'skipped')::int, 0) + 1)),
                '{errors}',
                coalesce(progress -> 'errors', '[]'::jsonb)
                    || CASE WHEN jsonb_array_length(coalesce(progress -> 'errors', '[]'::jsonb))
                                 < :most
                            THEN jsonb_build_array(jsonb_build_object(
                                'document_id', CAST(:document AS text),
                                'revision', CAST(:revision AS int),
                                'error', CAST(:reason AS text)))
                            ELSE '[]'::jsonb END)
            WHERE id = :version
            """
        ),
        {
            "version": version_id,
            "document": str(document_id),
            "revision": revision,
            "reason": reason[:500],
            "most": MAX_REPORTED_ERRORS,
        },
    )


async def activate_revision(
    session: AsyncSession, document_id: uuid.UUID, revision: int, index_version: int
) -> bool:
    """In one transaction: the revision's chunks become the document's, the others go (in
    every index version). ``index_version``: the active one, whose count the document shows."""
    document = await session.get(Document, document_id, with_for_update=True)
    if document is None:
        return False
    if document.revision != revision:  # superseded while it ran: drop its chunks
        await session.execute(
            delete(Chunk).where(Chunk.document_id == document_id, Chunk.revision == revision)
        )
        return False
    await session.execute(
        delete(Chunk).where(Chunk.document_id == document_id, Chunk.revision != revision)
    )
    count = await session.scalar(
        select(func.count()).where(
            Chunk.document_id == document_id,
            Chunk.index_version == index_version,
            Chunk.revision == revision,
        )
    )
    document.active_revision = revision
    document.chunk_count = int(count or 0)
    document.status, document.error = READY, None
    await session.flush()
    return True


async def set_status(
    session: AsyncSession,
    document_id: uuid.UUID,
    revision: int,
    status: str,
    *,
    error: str | None = None,
    only_from: tuple[str, ...] | None = None,
) -> None:
    """``only_from``: change it only from one of these statuses."""
    statement = update(Document).where(Document.id == document_id, Document.revision == revision)
    if only_from is not None:
        statement = statement.where(Document.status.in_(only_from))
    await session.execute(statement.values(status=status, error=error, updated_at=utcnow()))
