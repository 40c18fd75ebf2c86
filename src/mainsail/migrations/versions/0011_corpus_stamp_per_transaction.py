"""Corpus stamps: one write per owner and transaction, not one per document row.

0010's trigger added one to the owner's stamp for every document row a transaction wrote,
all at commit: each upsert walked the stamp row's growing chain of versions, so a bulk
write of one owner (deleting a user's 40,000 documents; activation's ``chunk_count``
update) took quadratic time at commit (7.8 s against 0.03 s). The stamp is now the id of
the last transaction that wrote the owner's documents: each transaction writes it once per
owner and finds it already set for every further row. Search compares stamps for equality
only, and no two transactions share an id, so every committed write still moves it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("corpus_stamps", "changes", new_column_name="written_by")
    # The row is locked by ON CONFLICT even when the WHERE is false; for this transaction's
    # own version of it that costs nothing further.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION mainsail_corpus_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO corpus_stamps AS s (owner_id, written_by)
            VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.owner_id ELSE NEW.owner_id END,
                    txid_current())
            ON CONFLICT (owner_id) DO UPDATE SET written_by = EXCLUDED.written_by
            WHERE s.written_by <> EXCLUDED.written_by;
            RETURN NULL;
        END
        $$
        """
    )
    # The counts 0010 left are of another kind: one could equal a later transaction's id.
    op.execute("UPDATE corpus_stamps SET written_by = txid_current()")


def downgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION mainsail_corpus_changed() RETURNS trigger
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
    op.alter_column("corpus_stamps", "written_by", new_column_name="changes")
