"""SQLAlchemy 2 async engine, session factory and the declarative base.

The request (or job) edge owns the transaction: it opens a session with ``Database.unit_of_work``
which commits on success and rolls back on any exception. Services ``flush()`` when they need
generated values and never ``commit()``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mainsail.core.errors import AppError
from mainsail.core.ids import uuid7
from mainsail.settings import DatabaseSettings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True)}


class IdMixin:
    """UUIDv7 primary keys: unique without coordination, and roughly time-ordered for b-trees."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Database:
    """Owns one engine and its session factory for the life of the app."""

    def __init__(self, url: URL, settings: DatabaseSettings) -> None:
        self.url = url
        self.settings = settings
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            pool_pre_ping=settings.pool_pre_ping,
            pool_recycle=1800,
            # Statement parameters (password hashes, emails) never reach error messages or logs.
            hide_parameters=True,
            connect_args={
                "timeout": settings.connect_timeout_s,
                "command_timeout": max(settings.statement_timeout_ms / 1000, 1) + 5,
                "server_settings": {
                    "application_name": "mainsail",
                    "statement_timeout": str(settings.statement_timeout_ms),
                    # Days and months (usage, budgets) are UTC ones, whatever the server's
                    # own time zone: date_trunc on a timestamptz uses the session's.
                    "timezone": "UTC",
                },
            },
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block exits cleanly, rolled back otherwise.

        An ``AppError`` whose class sets ``commit = True`` is the exception: its writes are
        committed before it propagates.
        """
        async with self.sessionmaker() as session:
            transaction = await session.begin()
            try:
                yield session
            except AppError as exc:
                await (transaction.commit() if exc.commit else transaction.rollback())
                raise
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement commits by itself: for single atomic statements
        on hot paths, one round trip each instead of BEGIN, the statement and COMMIT."""
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def autocommit_session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session over an autocommit connection: each statement its own transaction.
        For lookups whose few statements need no atomicity together (authentication)."""
        async with (
            self.autocommit() as connection,
            AsyncSession(bind=connection, expire_on_commit=False) as session,
        ):
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def current_revision(self) -> str | None:
        """The Alembic revision the database is at, or None before the first migration."""
        async with self.engine.connect() as connection:
            exists = await connection.scalar(text("SELECT to_regclass('alembic_version')"))
            if exists is None:
                return None
            result = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            return str(result) if result is not None else None

    async def dispose(self) -> None:
        await self.engine.dispose()
