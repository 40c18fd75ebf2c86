"""Browser clients may read the headers the API uses to talk to them."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.app import make_settings

ORIGIN = "http://app.example"


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url, http={"cors_origins": [ORIGIN]})


async def test_limit_replay_and_cache_headers_are_exposed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": ORIGIN})
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"x-request-id", "ratelimit-remaining", "retry-after", "mainsail-cache"} <= exposed


async def test_other_origins_get_no_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers
