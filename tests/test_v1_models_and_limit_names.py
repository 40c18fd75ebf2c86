"""/v1 details a review found after models.retrieve was added: the list still answers at
``/v1/models/``, and every error about the output limit names the parameter the caller sent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    """The app under test routes its models to the fake provider."""
    return gateway_settings(database_url, catalogue_file)


async def test_models_with_a_trailing_slash_is_not_an_unknown_model(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """``GET /v1/models/{model_id:path}`` also matches ``/v1/models/`` (model_id ""): that
    is the list, not a 404 "The model '' does not exist"."""
    response = await client.get("/v1/models/", headers=alice.headers)
    assert response.status_code in (200, 307), (response.status_code, response.text)


async def test_context_error_names_max_completion_tokens_when_that_was_sent(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """The context-window error (param ``messages``) says "max_completion_tokens asks for
    N" to a caller who sent only ``max_completion_tokens``, not "max_tokens"."""
    ask = {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "word " * 3500}],
        "max_completion_tokens": 900,
    }
    response = await client.post("/v1/chat/completions", json=ask, headers=alice.headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "max_tokens" not in error["message"], error
    assert "max_completion_tokens" in error["message"], error
