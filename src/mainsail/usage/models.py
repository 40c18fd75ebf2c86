"""Usage ledger: short-lived raw events, and hourly rollups that dashboards read."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, IdMixin, utcnow

# Rollups key on a user; calls made for nobody (system jobs) roll up under this id.
NOBODY = uuid.UUID(int=0)
MONEY = Numeric(20, 10)


class UsageEvent(IdMixin, Base):
    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_created_at_brin", "created_at", postgresql_using="brin"),
        Index("ix_usage_events_user_created", "user_id", "created_at"),
    )

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str | None] = mapped_column(String(128))
    # No foreign key: a ledger outlives accounts, and a batch must never fail because a
    # user was deleted between the call and the flush.
    user_id: Mapped[uuid.UUID | None]
    api_key_id: Mapped[uuid.UUID | None]
    kind: Mapped[str] = mapped_column(String(32))
    requested_model: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    cached_tokens_in: Mapped[int]
    cache_write_tokens: Mapped[int]
    estimated: Mapped[bool]
    cost_usd: Mapped[Decimal] = mapped_column(MONEY)
    latency_ms: Mapped[int]
    ttft_ms: Mapped[int | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    fallback_used: Mapped[bool]
    cache_hit: Mapped[bool]
    prompt_version: Mapped[str | None] = mapped_column(String(32))


class UsageRollup(Base):
    """Per user, model and hour: what ``GET /me/usage`` and the admin dashboard read."""

    __tablename__ = "usage_rollups"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(MONEY)
