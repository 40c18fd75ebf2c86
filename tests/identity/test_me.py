"""The caller's own account: read it, change email or password."""

from __future__ import annotations

import httpx

from tests.fixtures.identity import Account, sign_in


async def test_me_shows_the_account_without_secrets(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.get("/me", headers=alice.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(alice.id)
    assert body["email"] == "alice@example.com"
    assert body["role"] == "user"
    assert body["disabled"] is False
    assert "password" not in str(body).lower()


async def test_password_change_needs_the_current_password(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.patch(
        "/me",
        json={"current_password": "not it at all", "password": "brand new passphrase"},
        headers=alice.headers,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.current_password"
    # The old password still works.
    assert (await sign_in(client, alice.email, alice.password))["access_token"]


async def test_password_change_revokes_other_sessions_but_keeps_this_one(
    client: httpx.AsyncClient, alice: Account
) -> None:
    elsewhere = await sign_in(client, alice.email, alice.password)
    response = await client.patch(
        "/me",
        json={"current_password": alice.password, "password": "brand new passphrase"},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert (await client.get("/me", headers=alice.headers)).status_code == 200
    stale = {"Authorization": f"Bearer {elsewhere['access_token']}"}
    assert (await client.get("/me", headers=stale)).status_code == 401
    refresh = await client.post("/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]})
    assert refresh.status_code == 401
    old = await client.post("/auth/login", json={"email": alice.email, "password": alice.password})
    assert old.status_code == 401
    assert (await sign_in(client, alice.email, "brand new passphrase"))["access_token"]


async def test_short_new_password_is_refused(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.patch(
        "/me", json={"current_password": alice.password, "password": "short"}, headers=alice.headers
    )
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == "body.password"
    assert "at least 12" in error["message"]


async def test_email_change_is_normalised_and_unique(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    taken = await client.patch(
        "/me",
        json={"current_password": alice.password, "email": "BOB@example.com"},
        headers=alice.headers,
    )
    assert taken.status_code == 409
    moved = await client.patch(
        "/me",
        json={"current_password": alice.password, "email": " Alice.New@Example.COM "},
        headers=alice.headers,
    )
    assert moved.status_code == 200
    assert moved.json()["email"] == "alice.new@example.com"
    assert (await sign_in(client, "alice.new@example.com", alice.password))["access_token"]
