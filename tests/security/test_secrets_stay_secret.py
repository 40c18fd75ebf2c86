"""No password, hash, token or API key appears in any log line or error body."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from tests.fixtures.identity import Account
from tests.fixtures.logs import CapturedLogs


async def test_a_full_session_leaks_nothing(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, logs: CapturedLogs
) -> None:
    secrets: set[str] = {admin.password, admin.access_token, admin.refresh_token}
    error_bodies: list[str] = []

    async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
        response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            error_bodies.append(response.text)
        return response

    new_password = "the user's first passphrase"
    created = await call(
        "POST",
        "/admin/users",
        headers=admin.headers,
        json={"email": "eve@example.com", "password": new_password},
    )
    assert created.status_code == 201
    secrets.add(new_password)
    await call(
        "POST", "/auth/login", json={"email": "eve@example.com", "password": "wrong guess 1"}
    )
    await call("POST", "/auth/login", json={"email": "eve@example.com", "password": "x" * 5000})
    await call("POST", "/auth/login", json={"email": "eve@example.com", "password": 12345678901234})
    tokens = (
        await call(
            "POST", "/auth/login", json={"email": "eve@example.com", "password": new_password}
        )
    ).json()
    secrets |= {tokens["access_token"], tokens["refresh_token"]}
    rotated = (
        await call("POST", "/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).json()
    secrets |= {rotated["access_token"], rotated["refresh_token"]}
    await call("POST", "/auth/refresh", json={"refresh_token": tokens["refresh_token"]})  # reuse
    fresh = (
        await call(
            "POST", "/auth/login", json={"email": "eve@example.com", "password": new_password}
        )
    ).json()
    secrets |= {fresh["access_token"], fresh["refresh_token"]}
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}
    key = (await call("POST", "/me/api-keys", json={"name": "k"}, headers=headers)).json()["key"]
    secrets.add(key)
    await call("GET", "/me", headers={"X-API-Key": key})
    await call("GET", "/me", headers={"X-API-Key": key + "tampered"})
    await call("GET", "/me", headers={"Authorization": f"Bearer {fresh['access_token']}x"})
    changed = "the user's second passphrase"
    await call(
        "PATCH", "/me", headers=headers, json={"current_password": "wrong", "password": changed}
    )
    await call(
        "PATCH",
        "/me",
        headers=headers,
        json={"current_password": new_password, "password": "short"},
    )
    await call(
        "PATCH",
        "/me",
        headers=headers,
        json={"current_password": new_password, "password": changed},
    )
    secrets.add(changed)
    await call("POST", "/auth/logout", headers=headers)

    async with app.state.db.engine.connect() as connection:
        hashes = await connection.execute(
            text(
                "SELECT password_hash FROM users UNION ALL SELECT secret_hash FROM api_keys "
                "UNION ALL SELECT token_hash FROM refresh_tokens"
            )
        )
        secrets |= {row[0] for row in hashes}

    assert len(logs.events) > 15  # the flow was logged, so the check below means something
    assert any(e.get("user_id") for e in logs.events if e["event"] == "request")
    assert len(error_bodies) >= 7
    for secret in secrets:
        assert secret not in logs.text
        for body in error_bodies:
            assert secret not in body
