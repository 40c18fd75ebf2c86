"""Apps with small request limits, on memory or on a real Redis.

A test picks its limits by parametrizing ``rate_limit`` (merged over generous defaults) and
its storage with the ``storage`` fixture (``memory`` unless parametrized). Every test gets its
own key prefix, so Redis counters never leak from one test into another.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.app import make_settings


@pytest.fixture
def storage() -> str:
    return "memory"


@pytest.fixture
def rate_limit() -> dict[str, Any]:
    return {}


@pytest.fixture
def storage_url(storage: str, request: pytest.FixtureRequest) -> str:
    if storage == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(
    database_url: URL, storage_url: str, key_prefix: str, rate_limit: dict[str, Any]
) -> Settings:
    """Overrides the shared ``settings``: the ``app`` and ``client`` fixtures use these."""
    return limited_settings(database_url, storage_url, key_prefix, **rate_limit)


def limited_settings(
    database_url: URL, storage_url: str, key_prefix: str, **rate_limit: Any
) -> Settings:
    values: dict[str, Any] = {
        "storage_url": storage_url,
        "key_prefix": key_prefix,
        # Generous unless a test says otherwise: signing in is an anonymous request.
        "user": "1000/minute",
        "admin": "1000/minute",
        "anonymous": "1000/minute",
        **rate_limit,
    }
    return make_settings(database_url, rate_limit=values)
