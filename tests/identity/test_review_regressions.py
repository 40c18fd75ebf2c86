"""Regressions found in review: each test fails on the code before its fix."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from mainsail.core.deps import SessionDep
from mainsail.core.logging import configure_logging, get_logger
from mainsail.settings import LogSettings
from tests.fixtures.identity import Account, MakeAccount, create_api_key, create_user
from tests.fixtures.logs import CapturedLogs


async def test_concurrent_guesses_cannot_outrun_the_account_throttle(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await create_user(app, email="ada@example.com")
    guess = {"email": "ada@example.com", "password": "wrong wrong wrong"}
    responses = await asyncio.gather(*(client.post("/auth/login", json=guess) for _ in range(25)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(401) <= 5
    assert statuses.count(429) >= 20


async def test_one_users_wrong_passwords_do_not_throttle_another(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    wrong = {"current_password": "not my password", "password": "a brand new passphrase"}
    for _ in range(6):
        await client.patch("/me", json=wrong, headers=alice.headers)
    assert (await client.patch("/me", json=wrong, headers=alice.headers)).status_code == 429
    right = {"current_password": bob.password, "password": "bob's new passphrase"}
    assert (await client.patch("/me", json=right, headers=bob.headers)).status_code == 200


probe = APIRouter(prefix="/_probe")
# Made at run time: a traceback quotes source lines, and a literal there is not a leak.
HASHES = [f"s3cret-{uuid.uuid4().hex}" for _ in range(2)]


@probe.post("/duplicate-user")
async def duplicate_user(session: SessionDep) -> None:
    insert = text(
        "INSERT INTO users (id, email, password_hash, role, disabled, password_changed_at,"
        " created_at, updated_at) VALUES (gen_random_uuid(), 'dup@example.com', :hash, 'user',"
        " false, now(), now(), now())"
    )
    for value in HASHES:
        await session.execute(insert, {"hash": value})


async def test_statement_parameters_never_reach_logs(app: FastAPI, logs: CapturedLogs) -> None:
    app.include_router(probe)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/_probe/duplicate-user")
    assert response.status_code == 500
    (logged,) = [e for e in logs.events if e["event"] == "unhandled_exception"]
    assert "uq_users_email" in logged["exception"]  # the error itself is logged...
    for value in HASHES:  # ...without the statement's parameters
        assert value not in logs.text
        assert value not in response.text


def test_console_tracebacks_do_not_print_local_variables() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format="console", level="INFO"), stream=stream)
    try:

        def handler(password: str) -> None:
            raise ValueError("boom")

        secret = f"hunter2-{uuid.uuid4().hex}"
        try:
            handler(secret)
        except ValueError:
            get_logger("t").exception("failed")
    finally:
        configure_logging(LogSettings(format="json", level="INFO"))
    assert "ValueError" in stream.getvalue()
    assert secret not in stream.getvalue()


async def test_api_key_expiry_without_timezone_is_422(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post(
        "/me/api-keys",
        json={"name": "k", "expires_at": "2030-01-01T00:00:00"},
        headers=alice.headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.expires_at"


async def test_racing_email_changes_get_one_409_and_no_500(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    responses = await asyncio.gather(
        *(
            client.patch(
                "/me",
                json={"current_password": who.password, "email": "wanted@example.com"},
                headers=who.headers,
            )
            for who in (alice, bob)
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 409]


async def test_a_held_key_row_does_not_stall_other_requests_with_the_key(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice)
    async with app.state.db.engine.connect() as holder:
        await holder.execute(text("UPDATE api_keys SET last_used_at = NULL"))
        await holder.commit()
        await holder.execute(text("SELECT id FROM api_keys FOR UPDATE"))  # as a slow request
        started = time.perf_counter()
        response = await client.get("/me", headers={"X-API-Key": created["key"]})
        elapsed = time.perf_counter() - started
        await holder.rollback()
    assert response.status_code == 200
    assert elapsed < 1.0


async def test_an_admin_key_cannot_create_or_change_accounts(
    client: httpx.AsyncClient, admin: Account, alice: Account
) -> None:
    key = (await create_api_key(client, admin, scopes=["admin"]))["key"]
    headers = {"X-API-Key": key}
    assert (await client.get("/admin/users", headers=headers)).status_code == 200
    create = await client.post(
        "/admin/users",
        json={"email": "mole@example.com", "password": "known to the thief", "role": "admin"},
        headers=headers,
    )
    assert create.status_code == 403
    change = await client.patch(f"/admin/users/{alice.id}", json={"role": "admin"}, headers=headers)
    assert change.status_code == 403


async def test_concurrent_refresh_reuse_ends_the_winners_session_too(
    client: httpx.AsyncClient, alice: Account
) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
            for _ in range(3)
        )
    )
    (winner,) = [r.json() for r in responses if r.status_code == 200]
    headers = {"Authorization": f"Bearer {winner['access_token']}"}
    assert (await client.get("/me", headers=headers)).status_code == 401


@pytest.mark.parametrize("role", ["user", "admin"])
async def test_stored_hashes_with_older_costs_are_upgraded_on_sign_in(
    app: FastAPI, client: httpx.AsyncClient, make_account: MakeAccount, role: str
) -> None:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    account = await make_account()
    weak = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=512, parallelism=1),))
    async with app.state.db.engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET password_hash = :h WHERE id = :id"),
            {"h": weak.hash(account.password), "id": account.id},
        )
    login = await client.post(
        "/auth/login", json={"email": account.email, "password": account.password}
    )
    assert login.status_code == 200
    async with app.state.db.engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT password_hash FROM users WHERE id = :id"), {"id": account.id}
        )
    assert "m=1024" in stored  # the suite's configured cost, not the old m=512
