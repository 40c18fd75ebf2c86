"""Corpus stamps: a per-owner count of committed writes to documents, kept by a trigger.

Search keyed its caches on the owner's document count and the sum of their ``updated_at``,
a scan of all the owner's documents on every search (tens of milliseconds at 100,000). One
row read replaces it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "corpus_stamps",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", name=op.f("pk_corpus_stamps")),
    )
    op.execute(
        """
        CREATE FUNCTION mainsail_corpus_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO corpus_stamps AS s (owner_id, changes)
            VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.owner_id ELSE NEW.owner_id END, 1)
            ON CONFLICT (owner_id) DO UPDATE SET changes = s.changes + 1;
            RETURN NULL;
        END
        $$
        """
    )
    # Deferred to commit: the stamp's row is locked for the commit alone, not for the rest of
    # an upload's transaction (which stores the file).
    op.execute(
        """
        CREATE CONSTRAINT TRIGGER documents_corpus_changed
        AFTER INSERT OR UPDATE OR DELETE ON documents
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION mainsail_corpus_changed()
        """
    )
    op.execute(
        "INSERT INTO corpus_stamps (owner_id, changes) "
        "SELECT owner_id, count(*) FROM documents GROUP BY owner_id"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER documents_corpus_changed ON documents")
    op.execute("DROP FUNCTION mainsail_corpus_changed()")
    op.drop_table("corpus_stamps")
