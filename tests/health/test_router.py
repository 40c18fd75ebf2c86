from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from tests.fixtures.app import make_settings, wait_until
from tests.fixtures.database import Cluster
from tests.fixtures.servers import TcpRelay, free_port


async def test_health_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_each_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "migrations"}
    assert all(check["status"] == "ok" for check in body["checks"].values())


async def test_health_touches_no_dependency(app: FastAPI) -> None:
    await app.state.db.engine.dispose()
    app.state.db.engine.pool.dispose()
    app.state.readiness._checks.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/health")).status_code == 200


@pytest.fixture
async def client_for(database_url: URL) -> AsyncIterator[object]:
    """Builds a client over an app whose database URL the test chooses."""
    stack: list[tuple[FastAPI, httpx.AsyncClient]] = []

    async def build(url: URL) -> httpx.AsyncClient:
        application = create_app(
            make_settings(url, database={"connect_timeout_s": 1, "ready_timeout_s": 2})
        )
        await application.router.lifespan_context(application).__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application), base_url="http://t"
        )
        stack.append((application, client))
        return client

    yield build
    for application, client in stack:
        await client.aclose()
        await application.state.db.dispose()


async def test_unreachable_database_gives_503_naming_it(client_for: object) -> None:
    url = URL.create(
        "postgresql+asyncpg",
        username="u",
        password="pw-never-shown",
        host="127.0.0.1",
        port=free_port(),
        database="x",
    )
    client = await client_for(url)  # type: ignore[operator]
    health = await client.get("/health")
    assert health.status_code == 200
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_ready"
    assert "database" in body["failing"]
    assert body["checks"]["database"]["status"] == "failing"
    assert "database" in body["detail"]
    assert "pw-never-shown" not in response.text


async def test_schema_behind_head_is_not_ready(client_for: object, scratch_database: URL) -> None:
    client = await client_for(scratch_database)  # type: ignore[operator]
    response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["migrations"]
    assert "mainsail migrate upgrade" in body["checks"]["migrations"]["error"]


async def test_readiness_recovers_when_the_database_returns(
    client_for: object, pg_cluster: Cluster, database_url: URL
) -> None:
    if pg_cluster.socket_dir is None:
        pytest.skip("the relay needs the embedded server's unix socket")
    relay = TcpRelay(pg_cluster.socket_dir / ".s.PGSQL.5432", free_port())
    await relay.start()
    url = database_url.set(host="127.0.0.1", port=relay.port, query={})
    client = await client_for(url)  # type: ignore[operator]
    try:
        assert (await client.get("/ready")).status_code == 200
        await relay.stop()
        response = await client.get("/ready")
        assert response.status_code == 503
        assert "database" in response.json()["failing"]
        assert (await client.get("/health")).status_code == 200
        await relay.start()

        async def ready_again() -> bool:
            return (await client.get("/ready")).status_code == 200

        await wait_until(ready_again, within_s=15)
    finally:
        await relay.stop()
