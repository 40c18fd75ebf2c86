from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.gateway import gateway_settings


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mainsail_settings(**overrides): settings sections for the app under test"
    )


@pytest.fixture
def settings(request: pytest.FixtureRequest, database_url: URL, catalogue_file: Path) -> Settings:
    """The app under test routes its models to the fake provider; a test may change settings
    with ``@pytest.mark.mainsail_settings(idempotency={...}, llm={...})``."""
    marker = request.node.get_closest_marker("mainsail_settings")
    overrides: dict[str, Any] = dict(marker.kwargs) if marker else {}
    llm = overrides.pop("llm", None)
    return gateway_settings(database_url, catalogue_file, llm=llm, **overrides)
