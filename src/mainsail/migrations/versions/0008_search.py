"""Search: full-text column and index on chunks, a vector index per index version, and what
a reindex reports on its version.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = postgresql.JSONB(astext_type=sa.Text())
STATES = "state IN ('building', 'ready', 'active', 'retired', 'failed')"


def upgrade() -> None:
    op.add_column(
        "chunks",
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english'::regconfig, text)", persisted=True),
            nullable=False,
        ),
    )
    op.create_index("ix_chunks_tsv", "chunks", ["tsv"], postgresql_using="gin")
    op.drop_index("ix_chunks_owner_id_collection", table_name="chunks")
    op.create_index(
        "ix_chunks_index_version_owner_id_collection",
        "chunks",
        ["index_version", "owner_id", "collection"],
    )
    op.add_column("index_versions", sa.Column("job_id", sa.Uuid(), nullable=True))
    op.add_column("index_versions", sa.Column("error", sa.Text(), nullable=True))
    op.add_column(
        "index_versions",
        sa.Column("progress", JSONB, server_default=sa.text("'{}'::jsonb"), nullable=False),
    )
    op.add_column("index_versions", sa.Column("quality", JSONB, nullable=True))
    op.add_column(
        "index_versions", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.drop_constraint(op.f("ck_index_versions_state"), "index_versions", type_="check")
    op.create_check_constraint(op.f("ck_index_versions_state"), "index_versions", STATES)
    # A vector index for each version that has chunks already (later ones make their own).
    for version_id, dimension in op.get_bind().execute(
        sa.text("SELECT id, dimension FROM index_versions WHERE state <> 'retired'")
    ):
        op.execute(
            f"CREATE INDEX IF NOT EXISTS ix_chunks_embedding_v{int(version_id)} ON chunks "
            f"USING hnsw ((embedding::vector({int(dimension)})) vector_cosine_ops) "
            f"WHERE index_version = {int(version_id)}"
        )


def downgrade() -> None:
    for (name,) in op.get_bind().execute(
        sa.text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'chunks' "
            "AND indexname LIKE 'ix\\_chunks\\_embedding\\_v%'"
        )
    ):
        op.execute(f'DROP INDEX IF EXISTS "{name}"')
    op.drop_constraint(op.f("ck_index_versions_state"), "index_versions", type_="check")
    op.execute("UPDATE index_versions SET state = 'retired' WHERE state IN ('ready', 'failed')")
    op.create_check_constraint(
        op.f("ck_index_versions_state"),
        "index_versions",
        "state IN ('building', 'active', 'retired')",
    )
    op.drop_column("index_versions", "retired_at")
    op.drop_column("index_versions", "quality")
    op.drop_column("index_versions", "progress")
    op.drop_column("index_versions", "error")
    op.drop_column("index_versions", "job_id")
    op.drop_index("ix_chunks_index_version_owner_id_collection", table_name="chunks")
    op.create_index("ix_chunks_owner_id_collection", "chunks", ["owner_id", "collection"])
    op.drop_index("ix_chunks_tsv", table_name="chunks", postgresql_using="gin")
    op.drop_column("chunks", "tsv")
