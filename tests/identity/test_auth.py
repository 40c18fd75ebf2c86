"""Sign-in, refresh-token rotation and sign-out, through the HTTP API."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.core.principal import Role
from tests.fixtures.app import TEST_JWT_SECRET, make_settings, truncate_all
from tests.fixtures.identity import DEFAULT_PASSWORD, Account, create_user, sign_in


def assert_unauthorized(response: httpx.Response, code: str) -> dict[str, object]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith('Bearer realm="mainsail"')
    body = response.json()
    assert body["code"] == code
    return body  # type: ignore[no-any-return]


async def test_login_returns_a_verified_access_token_and_a_refresh_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user_id = await create_user(app, email="ada@example.com")
    response = await client.post(
        "/auth/login", json={"email": "  Ada@Example.com ", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_token"].startswith("msr_")
    claims = jwt.decode(
        body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"], audience="mainsail"
    )
    assert claims["sub"] == str(user_id)
    assert claims["role"] == "user"
    assert claims["iss"] == "mainsail"
    assert {"exp", "iat", "nbf", "jti", "sid"} <= set(claims)
    me = await client.get("/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await create_user(app, email="ada@example.com")
    wrong = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": "not the password"}
    )
    unknown = await client.post(
        "/auth/login", json={"email": "nobody@example.com", "password": "not the password"}
    )
    first = assert_unauthorized(wrong, "invalid_credentials")
    second = assert_unauthorized(unknown, "invalid_credentials")
    strip = {"request_id"}
    assert {k: v for k, v in first.items() if k not in strip} == {
        k: v for k, v in second.items() if k not in strip
    }


async def test_disabled_user_cannot_sign_in(app: FastAPI, client: httpx.AsyncClient) -> None:
    await create_user(app, email="gone@example.com")
    async with app.state.db.engine.begin() as connection:
        from sqlalchemy import text

        await connection.execute(text("UPDATE users SET disabled = true"))
    response = await client.post(
        "/auth/login", json={"email": "gone@example.com", "password": DEFAULT_PASSWORD}
    )
    assert_unauthorized(response, "invalid_credentials")


async def test_repeated_failures_for_one_account_are_throttled(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await create_user(app, email="ada@example.com")
    attempt = {"email": "ada@example.com", "password": "guess-guess-guess"}
    for _ in range(5):
        assert (await client.post("/auth/login", json=attempt)).status_code == 401
    throttled = await client.post("/auth/login", json=attempt)
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "too_many_requests"
    assert 1 <= int(throttled.headers["retry-after"]) <= 900
    # Even the right password waits: the throttle is checked before the password.
    right = await client.post(
        "/auth/login", json={"email": "ada@example.com", "password": DEFAULT_PASSWORD}
    )
    assert right.status_code == 429
    # Another account from another address is unaffected.
    await create_user(app, email="bea@example.com")
    assert (await sign_in(client, "bea@example.com", DEFAULT_PASSWORD))["access_token"]


async def test_repeated_failures_from_one_address_are_throttled(
    database_url: URL,
) -> None:
    settings = make_settings(database_url, auth={"login_max_attempts_per_ip": 3})
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for n in range(3):
                body = {"email": f"spray{n}@example.com", "password": "guess-guess-guess"}
                assert (await client.post("/auth/login", json=body)).status_code == 401
            blocked = await client.post(
                "/auth/login", json={"email": "fresh@example.com", "password": "whatever-pw"}
            )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1


@pytest.fixture
async def costly_hash_client(database_url: URL) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Real Argon2 costs (OWASP minimum), so hashing dominates the timing as in production."""
    settings = make_settings(
        database_url,
        auth={
            "argon2_time_cost": 2,
            "argon2_memory_kib": 19_456,
            "argon2_parallelism": 1,
            "login_max_failures_per_account": 1000,
            "login_max_attempts_per_ip": 1000,
        },
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield application, client
    await truncate_all(database_url)


async def test_unknown_email_costs_about_as_much_as_a_wrong_password(
    costly_hash_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    application, client = costly_hash_client
    await create_user(application, email="ada@example.com")

    async def timed(email: str) -> float:
        started = time.perf_counter()
        response = await client.post("/auth/login", json={"email": email, "password": "wrong-pw-1"})
        assert response.status_code == 401
        return time.perf_counter() - started

    known, unknown = [], []
    for _ in range(7):
        known.append(await timed("ada@example.com"))
        unknown.append(await timed("nobody@example.com"))
    ratio = statistics.median(unknown) / statistics.median(known)
    # Without the decoy hash an unknown email answers in well under a tenth of the time.
    assert 0.5 < ratio < 2.0, (known, unknown)


async def test_refresh_rotates_and_each_token_works_once(
    client: httpx.AsyncClient, alice: Account
) -> None:
    first = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != alice.refresh_token
    assert rotated["access_token"] != alice.access_token
    me = await client.get("/me", headers={"Authorization": f"Bearer {rotated['access_token']}"})
    assert me.status_code == 200
    second = await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert second.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, alice: Account
) -> None:
    rotated = (
        await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    ).json()
    replay = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert_unauthorized(replay, "refresh_token_reused")
    # The revocation stuck (it was committed although the answer was an error): every token
    # of the family is dead, the newest refresh token and the access tokens included.
    newest = await client.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert_unauthorized(newest, "invalid_credentials")
    for token in (alice.access_token, rotated["access_token"]):
        response = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert_unauthorized(response, "invalid_credentials")


async def test_concurrent_refreshes_with_one_token_let_exactly_one_through(
    client: httpx.AsyncClient, alice: Account
) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
            for _ in range(5)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 401, 401, 401, 401]


async def test_unknown_refresh_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/refresh", json={"refresh_token": "msr_not-a-real-token"})
    assert_unauthorized(response, "invalid_credentials")


async def test_logout_revokes_the_session_at_once(
    client: httpx.AsyncClient, alice: Account
) -> None:
    assert (await client.post("/auth/logout", headers=alice.headers)).status_code == 204
    assert_unauthorized(await client.get("/me", headers=alice.headers), "invalid_credentials")
    refresh = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert_unauthorized(refresh, "invalid_credentials")


async def test_logout_of_one_session_keeps_the_others(
    client: httpx.AsyncClient, alice: Account
) -> None:
    other = await sign_in(client, alice.email, alice.password)
    assert (await client.post("/auth/logout", headers=alice.headers)).status_code == 204
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}
    assert (await client.get("/me", headers=other_headers)).status_code == 200


async def test_logout_everywhere_ends_every_session(
    client: httpx.AsyncClient, alice: Account
) -> None:
    other = await sign_in(client, alice.email, alice.password)
    response = await client.post("/auth/logout", json={"all_sessions": True}, headers=alice.headers)
    assert response.status_code == 204
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}
    assert_unauthorized(await client.get("/me", headers=other_headers), "invalid_credentials")


async def test_logout_needs_credentials(client: httpx.AsyncClient) -> None:
    assert_unauthorized(await client.post("/auth/logout"), "not_authenticated")


async def test_demotion_takes_effect_without_new_tokens(
    client: httpx.AsyncClient, admin: Account, make_account: object
) -> None:
    second_admin = await make_account(role=Role.ADMIN)  # type: ignore[operator]
    assert (await client.get("/admin/users", headers=second_admin.headers)).status_code == 200
    demote = await client.patch(
        f"/admin/users/{second_admin.id}", json={"role": "user"}, headers=admin.headers
    )
    assert demote.status_code == 200
    # The old access token still says "admin"; the stored role wins.
    assert (await client.get("/admin/users", headers=second_admin.headers)).status_code == 403
