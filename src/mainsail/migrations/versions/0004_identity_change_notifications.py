"""Identity change notifications: every change that can end or narrow a credential sends the
user's id on the ``mainsail_identity`` channel, whoever makes it (a worker, the CLI, plain SQL).
Each process's principal cache listens and forgets that user.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, user id column, the columns whose change matters to a cached principal)
_WATCHED = (
    ("users", "id", "email, password_hash, role, disabled"),
    ("api_keys", "owner_id", "owner_id, secret_hash, scopes, expires_at, revoked_at"),
    ("auth_sessions", "user_id", "user_id, expires_at, revoked_at"),
)


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION mainsail_identity_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            changed jsonb;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                changed := to_jsonb(OLD);
            ELSE
                changed := to_jsonb(NEW);
            END IF;
            PERFORM pg_notify('mainsail_identity', changed ->> TG_ARGV[0]);
            RETURN NULL;
        END
        $$
        """
    )
    # A truncation names no user: '*' tells every cache to forget everything.
    op.execute(
        """
        CREATE FUNCTION mainsail_identity_truncated() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('mainsail_identity', '*');
            RETURN NULL;
        END
        $$
        """
    )
    for table, user_column, columns in _WATCHED:
        op.execute(
            f"CREATE TRIGGER {table}_identity_changed "
            f"AFTER UPDATE OF {columns} OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION mainsail_identity_changed('{user_column}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_identity_truncated AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION mainsail_identity_truncated()"
        )


def downgrade() -> None:
    for table, _, _ in _WATCHED:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_identity_changed ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_identity_truncated ON {table}")
    op.execute("DROP FUNCTION IF EXISTS mainsail_identity_changed()")
    op.execute("DROP FUNCTION IF EXISTS mainsail_identity_truncated()")
