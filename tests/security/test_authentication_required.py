"""Anonymous access is off by default: every route needs credentials unless it is public by
nature (signing in) or settings open it (health, readiness, docs)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from tests.fixtures.app import make_settings

# Reachable without credentials whatever the settings say: they are how one gets credentials.
PUBLIC = {("POST", "/auth/login"), ("POST", "/auth/refresh")}
OPENABLE = {("GET", "/health"), ("GET", "/ready"), ("GET", "/docs"), ("GET", "/openapi.json")}


def all_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every documented operation (the docs routes themselves are in OPENABLE)."""
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    )


async def anonymous_status(client: httpx.AsyncClient, method: str, path: str) -> int:
    concrete = path
    while "{" in concrete:
        start, end = concrete.index("{"), concrete.index("}")
        concrete = concrete[:start] + str(uuid.uuid4()) + concrete[end + 1 :]
    body = {} if method in ("POST", "PUT", "PATCH") else None
    response = await client.request(method, concrete, json=body)
    return response.status_code


async def test_every_route_refuses_anonymous_callers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    guarded = [r for r in all_routes(app) if r not in PUBLIC | OPENABLE]
    assert len(guarded) >= 10
    refused = {r: await anonymous_status(client, *r) for r in guarded}
    assert all(status == 401 for status in refused.values()), refused


@pytest.mark.parametrize(
    ("environment", "anonymous_read", "open_paths"),
    [
        ("test", None, {"/health", "/ready"}),
        ("production", None, {"/health", "/ready"}),
        ("development", None, {"/health", "/ready", "/docs", "/openapi.json"}),
        ("test", [], set()),
        ("test", ["docs"], {"/docs", "/openapi.json"}),
    ],
)
async def test_settings_decide_what_anonymous_callers_may_read(
    database_url: URL,
    environment: str,
    anonymous_read: list[str] | None,
    open_paths: set[str],
) -> None:
    auth: dict[str, object] = {"anonymous_read": anonymous_read}
    settings = make_settings(database_url, environment=environment, auth=auth)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            statuses = {path: (await client.get(path)).status_code for _, path in OPENABLE}
    assert {path for path, status in statuses.items() if status == 200} == open_paths
    assert all(statuses[path] == 401 for path in statuses if path not in open_paths)


async def test_docs_are_readable_with_credentials_when_closed(
    client: httpx.AsyncClient, alice: object
) -> None:
    response = await client.get("/openapi.json", headers=alice.headers)  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert "/auth/login" in response.json()["paths"]
