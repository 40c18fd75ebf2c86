from __future__ import annotations

import httpx
from fastapi import FastAPI

from mainsail.core.db import utcnow
from mainsail.identity import service
from tests.fixtures.identity import Account, sign_in


async def test_operator_reset_ends_every_session_and_sets_the_new_password(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    kit = app.state.identity
    async with app.state.db.unit_of_work() as session:
        await service.set_password(
            session,
            kit.passwords,
            kit.settings,
            alice.id,
            password="the reset passphrase",
            now=utcnow(),
        )
    assert (await client.get("/me", headers=alice.headers)).status_code == 401
    refresh = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert refresh.status_code == 401
    old = await client.post("/auth/login", json={"email": alice.email, "password": alice.password})
    assert old.status_code == 401
    assert (await sign_in(client, alice.email, "the reset passphrase"))["access_token"]
