"""One row per (user, Idempotency-Key): the running claim, then the stored answer."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, utcnow

RUNNING = "running"
DONE = "done"
MAX_KEY_LENGTH = 255


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (CheckConstraint("state IN ('running', 'done')", name="state"),)

    # Keys are scoped to the caller: two users' equal keys never meet.
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    # SHA-256 (hex) of method, path, query and canonical body.
    fingerprint: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    # The scopes of the credential that made the request: a replay needs them all, so a
    # narrower key of the same user cannot read an answer it could not have asked for.
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    # While running: the claim's random token, and when it lapses unless renewed.
    owner: Mapped[uuid.UUID | None]
    locked_until: Mapped[datetime | None]
    # Once done: the answer to replay.
    status_code: Mapped[int | None]
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
