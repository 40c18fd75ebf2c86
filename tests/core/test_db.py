from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.core.db import Database
from mainsail.core.deps import SessionDep
from mainsail.core.errors import Conflict
from mainsail.settings import DatabaseSettings
from tests.fixtures.app import make_settings
from tests.fixtures.database import run_sql

router = APIRouter(prefix="/_probe")


@router.post("/notes/{body}")
async def add_note(body: str, session: SessionDep) -> dict[str, str]:
    await session.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
    if body == "refuse":
        raise Conflict("refused after writing")
    if body == "crash":
        raise RuntimeError("crashed after writing")
    return {"body": body}


@pytest.fixture
def notes_url(scratch_database: URL) -> URL:
    run_sql(scratch_database, "CREATE TABLE notes (body text NOT NULL)")
    return scratch_database


@pytest.fixture
async def db(notes_url: URL) -> AsyncIterator[Database]:
    database = Database(notes_url, DatabaseSettings())
    yield database
    await database.dispose()


async def count_notes(db: Database) -> int:
    async with db.engine.connect() as connection:
        return int(await connection.scalar(text("SELECT count(*) FROM notes")) or 0)


async def test_unit_of_work_commits_on_success(db: Database) -> None:
    async with db.unit_of_work() as session:
        await session.execute(text("INSERT INTO notes VALUES ('kept')"))
    assert await count_notes(db) == 1


async def test_unit_of_work_rolls_back_on_error(db: Database) -> None:
    async def write_then_fail() -> None:
        async with db.unit_of_work() as session:
            await session.execute(text("INSERT INTO notes VALUES ('lost')"))
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await write_then_fail()
    assert await count_notes(db) == 0


@pytest.fixture
async def notes_app(notes_url: URL) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(make_settings(notes_url))
    application.include_router(router)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield application, client


async def test_request_edge_commits_a_successful_request(
    notes_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    application, client = notes_app
    assert (await client.post("/_probe/notes/hello")).status_code == 200
    assert await count_notes(application.state.db) == 1


@pytest.mark.parametrize(("body", "status"), [("refuse", 409), ("crash", 500)])
async def test_request_edge_rolls_back_a_failed_request(
    notes_app: tuple[FastAPI, httpx.AsyncClient], body: str, status: int
) -> None:
    application, client = notes_app
    assert (await client.post(f"/_probe/notes/{body}")).status_code == status
    assert await count_notes(application.state.db) == 0


async def test_database_loss_during_request_is_503(notes_url: URL) -> None:
    dead = URL.create("postgresql+asyncpg", username="u", host="127.0.0.1", port=1, database="x")
    application = create_app(make_settings(dead, database={"connect_timeout_s": 1}))
    application.include_router(router)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/_probe/notes/x")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
