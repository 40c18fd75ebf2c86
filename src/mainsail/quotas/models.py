"""Monthly budgets: per-user overrides of the role defaults, and the counters they guard."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, ForeignKey, Numeric
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, utcnow

MONEY = Numeric(20, 10)


class QuotaLimit(Base):
    """An admin's override for one user; a NULL column means the role's default."""

    __tablename__ = "quota_limits"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cost_usd: Mapped[Decimal | None] = mapped_column(MONEY)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class QuotaCounter(Base):
    """What one user used and holds in reserve in one month (``period`` = its first day)."""

    __tablename__ = "quota_counters"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[date] = mapped_column(primary_key=True)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_used: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_reserved: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
