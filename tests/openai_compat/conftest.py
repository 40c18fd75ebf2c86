from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.core.db import Database
from mainsail.core.principal import Role
from mainsail.identity import service as identity
from mainsail.identity.passwords import Passwords
from mainsail.settings import Settings
from tests.fixtures.app import truncate_all
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import DEFAULT_PASSWORD
from tests.fixtures.servers import running_server


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    """The app under test routes its models to the fake provider."""
    return gateway_settings(database_url, catalogue_file)


@dataclass
class LiveMainsail:
    base_url: str
    api_key: str
    user_id: uuid.UUID
    settings: Settings

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"


async def open_account(
    base_url: str, settings: Settings, *, role: Role = Role.USER
) -> tuple[str, uuid.UUID]:
    """An account made through the service, signed in and given an API key over HTTP."""
    url = settings.async_database_url()
    assert url is not None
    db = Database(url, settings.database)
    email = f"sdk-{uuid.uuid4().hex[:8]}@example.com"
    try:
        async with db.unit_of_work() as session:
            user = await identity.create_user(
                session,
                Passwords(settings.auth),
                settings.auth,
                email=email,
                password=DEFAULT_PASSWORD,
                role=role,
            )
    finally:
        await db.dispose()
    async with httpx.AsyncClient(base_url=base_url) as http:
        tokens = (
            await http.post("/auth/login", json={"email": email, "password": DEFAULT_PASSWORD})
        ).json()
        key = await http.post(
            "/me/api-keys",
            json={"name": "sdk"},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
    return key.json()["key"], user.id


@pytest.fixture
async def live(settings: Settings, database_url: URL) -> AsyncIterator[LiveMainsail]:
    """Mainsail on a real socket (uvicorn in a thread, its own lifespan and event loop)."""
    with running_server(create_app(settings)) as base_url:
        key, user_id = await open_account(base_url, settings)
        yield LiveMainsail(base_url=base_url, api_key=key, user_id=user_id, settings=settings)
    await truncate_all(database_url)
