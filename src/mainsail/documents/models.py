"""Documents, their chunks, and the index versions chunks belong to.

A document is one logical file of one owner in one collection. Uploading changed bytes under
the same filename makes a new *revision*: its chunks are written beside the old ones, and one
transaction then makes it the ``active_revision`` and deletes the old chunks, so search (which
reads only the active revision) never sees a mix.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, IdMixin, TimestampMixin, utcnow
from mainsail.core.ownership import OwnedMixin

QUEUED, PROCESSING, READY, FAILED = "queued", "processing", "ready", "failed"
# building -> ready -> active -> retired; building -> failed.
BUILDING, READY_TO_ACTIVATE, ACTIVE = "building", "ready", "active"
RETIRED, BUILD_FAILED = "retired", "failed"


class Document(IdMixin, OwnedMixin, TimestampMixin, Base):
    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'processing', 'ready', 'failed')", name="status"),
        # One logical document per name in a collection; re-uploads make revisions of it.
        Index(
            "uq_documents_owner_collection_filename",
            "owner_id",
            "collection",
            "filename",
            unique=True,
            postgresql_where=text("filename IS NOT NULL"),
        ),
        Index("ix_documents_owner_collection_sha256", "owner_id", "collection", "sha256"),
        Index("ix_documents_owner_created_at", "owner_id", "created_at"),
    )

    collection: Mapped[str] = mapped_column(String(128))
    filename: Mapped[str | None] = mapped_column(String(512))
    # Of the latest revision: sniffed from the bytes, never taken from the client.
    content_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # Per-upload chunking ({"chunk_size", "chunk_overlap"}), else the index version's.
    chunking: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(default=1)  # the latest upload
    active_revision: Mapped[int | None]  # the one search reads; None until the first is ready
    chunk_count: Mapped[int] = mapped_column(default=0)  # of the active revision
    job_id: Mapped[uuid.UUID | None]  # the latest ingestion job


class CorpusStamp(Base):
    """The id of the last transaction that wrote each owner's documents: search's caches key
    on it, so an upload, a new revision or a delete makes their entries unreachable.

    Kept by a trigger on ``documents`` (migrations 0010, 0011), deferred to commit, so the
    row is locked only while a transaction commits (uploads of one owner never wait on each
    other for longer), written once per owner and transaction however many rows it wrote, and
    moved by every committed write in whatever order transactions commit (no two share an
    id). No foreign key: the trigger also stamps the deletes of a user's last documents."""

    __tablename__ = "corpus_stamps"

    owner_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    written_by: Mapped[int] = mapped_column(BigInteger)


class IndexVersion(Base):
    """What a set of chunks was made with: the embedder, its dimension, the chunking."""

    __tablename__ = "index_versions"
    __table_args__ = (
        CheckConstraint(
            "state IN ('building', 'ready', 'active', 'retired', 'failed')", name="state"
        ),
        # At most one active version.
        Index(
            "uq_index_versions_active",
            "state",
            unique=True,
            postgresql_where=text("state = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    embedder: Mapped[str] = mapped_column(String(128))
    dimension: Mapped[int]
    chunk_size: Mapped[int]
    chunk_overlap: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    job_id: Mapped[uuid.UUID | None]  # the build (reindex) job
    error: Mapped[str | None] = mapped_column(Text)
    # {"documents": n, "done": n, "chunks": n} while a build runs.
    progress: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    # Retrieval quality on the evaluation set, when one is configured.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "index_version", "revision", "ordinal"),
        Index(
            "ix_chunks_index_version_owner_id_collection", "index_version", "owner_id", "collection"
        ),
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    index_version: Mapped[int] = mapped_column(ForeignKey("index_versions.id"))
    revision: Mapped[int]
    ordinal: Mapped[int]
    # Copied from the document so search filters without a join.
    owner_id: Mapped[uuid.UUID]
    collection: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int]
    # Offsets into the document's extracted text (blocks joined by a blank line).
    char_start: Mapped[int]
    char_end: Mapped[int]
    page: Mapped[int | None]
    page_end: Mapped[int | None]
    heading: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    # No fixed dimension: each index version fixes its own (and its own partial index).
    embedding: Mapped[Any] = mapped_column(Vector())
    # Full-text search (English stemming and stop words).
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english'::regconfig, text)", persisted=True)
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
