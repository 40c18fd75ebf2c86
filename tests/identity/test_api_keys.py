"""API keys: shown once, stored hashed, scoped, revocable at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from mainsail.core.principal import Principal, Role, Scope
from mainsail.identity.deps import require_scope
from mainsail.identity.service import MAX_ACTIVE_API_KEYS
from tests.fixtures.identity import Account, MakeAccount, create_api_key

probe = APIRouter(prefix="/_probe")


@probe.get("/documents", dependencies=[require_scope(Scope.DOCUMENTS_READ)])
async def read_documents() -> dict[str, bool]:
    return {"ok": True}


@probe.post("/documents", dependencies=[require_scope(Scope.DOCUMENTS_WRITE)])
async def write_documents() -> dict[str, bool]:
    return {"ok": True}


@pytest.fixture
def scoped_app(app: FastAPI) -> FastAPI:
    app.include_router(probe)
    return app


def key_headers(key: str, *, header: str = "authorization") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if header == "authorization" else {"X-API-Key": key}


async def test_created_key_is_shown_once_and_stored_only_hashed(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice, name="ci pipeline")
    assert created["key"].startswith(created["prefix"] + "_")
    assert created["prefix"].startswith("msk_")
    assert created["name"] == "ci pipeline"
    assert set(created["scopes"]) == {"chat", "analyze", "documents:read", "documents:write"}
    listed = (await client.get("/me/api-keys", headers=alice.headers)).json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert "secret_hash" not in listed[0]
    async with app.state.db.engine.connect() as connection:
        stored = (await connection.execute(text("SELECT * FROM api_keys"))).mappings().one()
    assert created["key"] not in [str(v) for v in stored.values()]
    assert len(stored["secret_hash"]) == 64


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_key_authenticates_and_records_last_use(
    client: httpx.AsyncClient, alice: Account, header: str
) -> None:
    created = await create_api_key(client, alice)
    me = await client.get("/me", headers=key_headers(created["key"], header=header))
    assert me.status_code == 200
    assert me.json()["id"] == str(alice.id)
    shown = (await client.get(f"/me/api-keys/{created['id']}", headers=alice.headers)).json()
    assert shown["last_used_at"] is not None


async def test_revocation_takes_effect_on_the_next_request(
    client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice)
    headers = key_headers(created["key"])
    assert (await client.get("/me", headers=headers)).status_code == 200
    deleted = await client.delete(f"/me/api-keys/{created['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    refused = await client.get("/me", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    assert (await client.get("/me/api-keys", headers=alice.headers)).json() == []
    again = await client.delete(f"/me/api-keys/{created['id']}", headers=alice.headers)
    assert again.status_code == 404


async def test_expired_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = await create_api_key(client, alice, expires_at=soon)
    assert (await client.get("/me", headers=key_headers(created["key"]))).status_code == 200
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text("UPDATE api_keys SET expires_at = now() - interval '1s'"))
    # Changed behind the app's back (as another process would): the cached key is dropped when
    # the change notification arrives, within moments.
    for _ in range(200):
        refused = await client.get("/me", headers=key_headers(created["key"]))
        if refused.status_code == 401:
            break
        await asyncio.sleep(0.01)
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]


async def test_keys_per_user_are_capped_and_expired_or_revoked_ones_free_their_place(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    short = [await create_api_key(client, alice, name="short", expires_at=soon) for _ in range(5)]
    for _ in range(MAX_ACTIVE_API_KEYS - len(short)):
        last = await create_api_key(client, alice)

    refused = await client.post("/me/api-keys", json={"name": "one more"}, headers=alice.headers)
    assert refused.status_code == 409
    assert f"At most {MAX_ACTIVE_API_KEYS}" in refused.json()["detail"]

    # Expired keys authenticate nothing any more: they no longer hold a place.
    async with app.state.db.engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1s' WHERE name = 'short'")
        )
    for _ in range(len(short)):
        await create_api_key(client, alice, name="after expiry")
    full = await client.post("/me/api-keys", json={"name": "one more"}, headers=alice.headers)
    assert full.status_code == 409
    # Nor do revoked ones.
    assert (await client.delete(f"/me/api-keys/{last['id']}", headers=alice.headers)).is_success
    await create_api_key(client, alice, name="after revoking")


async def test_expiry_in_the_past_is_refused_at_creation(
    client: httpx.AsyncClient, alice: Account
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = await client.post(
        "/me/api-keys", json={"name": "late", "expires_at": past}, headers=alice.headers
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.expires_at"


async def test_right_prefix_with_wrong_secret_is_refused_like_an_unknown_key(
    client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice)
    wrong_secret = created["prefix"] + "_" + "A" * 43
    unknown = "msk_000000000000_" + "A" * 43
    answers = [
        (await client.get("/me", headers=key_headers(key, header="x-api-key"))).json()
        for key in (wrong_secret, unknown, "msk_short", "plainly-not-a-key")
    ]
    assert all(a["status"] == 401 for a in answers)
    assert len({a["detail"] for a in answers}) == 1


async def test_disabled_owner_makes_the_key_useless(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice)
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text("UPDATE users SET disabled = true"))
    assert (await client.get("/me", headers=key_headers(created["key"]))).status_code == 401


async def test_scopes_limit_what_a_key_can_do(
    scoped_app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    reader = await create_api_key(client, alice, scopes=["documents:read"])
    headers = key_headers(reader["key"])
    assert (await client.get("/_probe/documents", headers=headers)).status_code == 200
    refused = await client.post("/_probe/documents", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"
    assert 'scope="documents:write"' in refused.headers["www-authenticate"]
    # A signed-in session holds every scope of its role.
    assert (await client.post("/_probe/documents", headers=alice.headers)).status_code == 200


async def test_keys_cannot_manage_keys_or_the_account(
    client: httpx.AsyncClient, alice: Account
) -> None:
    created = await create_api_key(client, alice)
    headers = key_headers(created["key"])
    mint = await client.post("/me/api-keys", json={"name": "another"}, headers=headers)
    assert mint.status_code == 403
    revoke = await client.delete(f"/me/api-keys/{created['id']}", headers=headers)
    assert revoke.status_code == 403
    change = await client.patch(
        "/me", json={"current_password": alice.password, "password": "x" * 20}, headers=headers
    )
    assert change.status_code == 403
    logout = await client.post("/auth/logout", headers=headers)
    assert logout.status_code == 403


async def test_users_cannot_grant_the_admin_scope(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post(
        "/me/api-keys", json={"name": "sneaky", "scopes": ["admin"]}, headers=alice.headers
    )
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


async def test_admin_key_needs_the_admin_scope_for_admin_routes(
    client: httpx.AsyncClient, admin: Account
) -> None:
    plain = await create_api_key(client, admin)
    assert "admin" not in plain["scopes"]
    refused = await client.get("/admin/users", headers=key_headers(plain["key"]))
    assert refused.status_code == 403
    powerful = await create_api_key(client, admin, scopes=["admin"])
    allowed = await client.get("/admin/users", headers=key_headers(powerful["key"]))
    assert allowed.status_code == 200


async def test_admin_scope_is_void_once_the_owner_is_demoted(
    client: httpx.AsyncClient, admin: Account, make_account: MakeAccount
) -> None:
    other_admin = await make_account(role=Role.ADMIN)
    key = await create_api_key(client, other_admin, scopes=["admin"])
    await client.patch(
        f"/admin/users/{other_admin.id}", json={"role": "user"}, headers=admin.headers
    )
    refused = await client.get("/admin/users", headers=key_headers(key["key"]))
    assert refused.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x" * 101},
        {"name": "k", "scopes": ["documents:delete"]},
        {"name": "k", "scopes": []},
        {"name": "k", "expires_at": "tomorrow"},
        {"name": "k", "owner_id": "00000000-0000-0000-0000-000000000000"},
    ],
)
async def test_invalid_key_requests_name_the_field(
    client: httpx.AsyncClient, alice: Account, body: dict[str, object]
) -> None:
    response = await client.post("/me/api-keys", json=body, headers=alice.headers)
    assert response.status_code == 422
    fields = {e["field"].split(".")[1] for e in response.json()["errors"]}
    assert fields <= set(body)
    assert fields


def test_principal_is_admin_only_with_the_admin_scope() -> None:
    import uuid

    base = {"user_id": uuid.uuid4(), "email": "a@b.c", "via": "api_key"}
    assert not Principal(role=Role.ADMIN, scopes=frozenset({Scope.CHAT}), **base).is_admin  # type: ignore[arg-type]
    assert Principal(role=Role.ADMIN, scopes=frozenset({Scope.ADMIN}), **base).is_admin  # type: ignore[arg-type]
    assert not Principal(role=Role.USER, scopes=frozenset({Scope.ADMIN}), **base).is_admin  # type: ignore[arg-type]


async def test_owner_scoping_lets_admins_through_and_nobody_else(
    client: httpx.AsyncClient, alice: Account, bob: Account, admin: Account
) -> None:
    created = await create_api_key(client, alice)
    path = f"/me/api-keys/{created['id']}"
    assert (await client.get(path, headers=bob.headers)).status_code == 404
    # An admin acting as admin can read and revoke any user's key (e.g. one that leaked).
    assert (await client.get(path, headers=admin.headers)).status_code == 200
    assert (await client.delete(path, headers=admin.headers)).status_code == 204
    assert (await client.get("/me", headers=key_headers(created["key"]))).status_code == 401
    # "Mine" listings stay the caller's own, admin or not.
    assert (await client.get("/me/api-keys", headers=admin.headers)).json() == []
