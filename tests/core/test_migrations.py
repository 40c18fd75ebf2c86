from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from mainsail.core import migrations
from mainsail.models import metadata
from tests.fixtures.database import asyncpg_dsn


async def _extensions(url: URL) -> set[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT extname FROM pg_extension")
        return {row["extname"] for row in rows}
    finally:
        await connection.close()


def test_single_head() -> None:
    assert len(migrations.head_revisions()) == 1


def test_upgrade_creates_vector_and_downgrade_round_trips(scratch_database: URL) -> None:
    migrations.upgrade(scratch_database)
    assert "vector" in asyncio.run(_extensions(scratch_database))
    migrations.downgrade(scratch_database, "base")
    assert "vector" not in asyncio.run(_extensions(scratch_database))
    migrations.upgrade(scratch_database)
    assert "vector" in asyncio.run(_extensions(scratch_database))


def test_models_and_migrations_do_not_drift(database_url: URL) -> None:
    async def diff() -> list[object]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: compare_metadata(
                        MigrationContext.configure(
                            sync,
                            opts={
                                "compare_type": True,
                                "compare_server_default": True,
                                "include_object": migrations.include_object,
                            },
                        ),
                        metadata,
                    )
                )
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []
