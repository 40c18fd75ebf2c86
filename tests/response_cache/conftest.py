from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.gateway import gateway_settings


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    """The app under test routes its models to the fake provider; analysis uses fake-gpt."""
    return gateway_settings(database_url, catalogue_file, analysis={"model": "fake-gpt"})
