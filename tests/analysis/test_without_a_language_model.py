"""With no provider configured only the extractive model exists: analysis needs generation,
so it answers 503 naming what to configure."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.app import make_settings
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url)  # hermetic: no provider keys at all


async def test_analysis_without_a_language_model_names_the_settings(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post(
        "/analyze", json={"task": "sentiment", "input": "Fine."}, headers=alice.headers
    )
    assert response.status_code == 503
    assert response.json()["code"] == "generation_unavailable"
    assert "OPENAI_API_KEY" in response.json()["detail"]
    named = await client.post(
        "/analyze",
        json={"task": "sentiment", "input": "Fine.", "options": {"model": "extractive"}},
        headers=alice.headers,
    )
    assert named.status_code == 503
    assert named.json()["code"] == "generation_unavailable"
