"""User administration: admins only, paginated, and the last admin cannot be removed."""

from __future__ import annotations

import httpx
import pytest

from mainsail.core.principal import Role
from tests.fixtures.identity import Account, MakeAccount, sign_in


async def test_admin_lists_users_in_pages(
    client: httpx.AsyncClient, admin: Account, make_account: MakeAccount
) -> None:
    for _ in range(4):
        await make_account()
    first = (await client.get("/admin/users?limit=2", headers=admin.headers)).json()
    second = (await client.get("/admin/users?limit=2&offset=2", headers=admin.headers)).json()
    third = (await client.get("/admin/users?limit=2&offset=4", headers=admin.headers)).json()
    assert first["total"] == second["total"] == third["total"] == 5
    ids = [u["id"] for page in (first, second, third) for u in page["items"]]
    assert len(ids) == len(set(ids)) == 5
    assert (first["limit"], first["offset"]) == (2, 0)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "limit=abc"])
async def test_bad_pagination_is_422(client: httpx.AsyncClient, admin: Account, query: str) -> None:
    response = await client.get(f"/admin/users?{query}", headers=admin.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][0] == "query"


async def test_non_admins_are_forbidden(client: httpx.AsyncClient, alice: Account) -> None:
    for method, path in [("GET", "/admin/users"), ("POST", "/admin/users")]:
        response = await client.request(method, path, headers=alice.headers, json={})
        assert response.status_code == 403
        assert response.json()["code"] == "insufficient_scope"


async def test_admin_creates_a_user_who_can_sign_in(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.post(
        "/admin/users",
        json={"email": "New@Example.com", "password": "a long enough pass", "role": "user"},
        headers=admin.headers,
    )
    assert response.status_code == 201
    assert response.json()["email"] == "new@example.com"
    assert (await sign_in(client, "new@example.com", "a long enough pass"))["access_token"]
    duplicate = await client.post(
        "/admin/users",
        json={"email": "NEW@example.com", "password": "a long enough pass"},
        headers=admin.headers,
    )
    assert duplicate.status_code == 409


async def test_disabling_a_user_ends_their_sessions(
    client: httpx.AsyncClient, admin: Account, alice: Account
) -> None:
    response = await client.patch(
        f"/admin/users/{alice.id}", json={"disabled": True}, headers=admin.headers
    )
    assert response.status_code == 200
    assert response.json()["disabled"] is True
    assert (await client.get("/me", headers=alice.headers)).status_code == 401
    refresh = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert refresh.status_code == 401
    login = await client.post(
        "/auth/login", json={"email": alice.email, "password": alice.password}
    )
    assert login.status_code == 401


async def test_role_changes_apply(
    client: httpx.AsyncClient, admin: Account, alice: Account
) -> None:
    promoted = await client.patch(
        f"/admin/users/{alice.id}", json={"role": "admin"}, headers=admin.headers
    )
    assert promoted.json()["role"] == "admin"
    assert (await client.get("/admin/users", headers=alice.headers)).status_code == 200


@pytest.mark.parametrize("change", [{"role": "user"}, {"disabled": True}])
async def test_the_last_active_admin_cannot_be_removed(
    client: httpx.AsyncClient, admin: Account, change: dict[str, object]
) -> None:
    response = await client.patch(f"/admin/users/{admin.id}", json=change, headers=admin.headers)
    assert response.status_code == 409
    assert (await client.get("/admin/users", headers=admin.headers)).status_code == 200


async def test_an_admin_may_step_down_when_another_remains(
    client: httpx.AsyncClient, admin: Account, make_account: MakeAccount
) -> None:
    await make_account(role=Role.ADMIN)
    response = await client.patch(
        f"/admin/users/{admin.id}", json={"role": "user"}, headers=admin.headers
    )
    assert response.status_code == 200


async def test_unknown_user_is_404(client: httpx.AsyncClient, admin: Account) -> None:
    missing = "00000000-0000-7000-8000-000000000000"
    assert (await client.get(f"/admin/users/{missing}", headers=admin.headers)).status_code == 404
    patch = await client.patch(
        f"/admin/users/{missing}", json={"disabled": True}, headers=admin.headers
    )
    assert patch.status_code == 404
    malformed = await client.get("/admin/users/not-a-uuid", headers=admin.headers)
    assert malformed.status_code == 422


@pytest.mark.parametrize(
    "body", [{"role": "superuser"}, {"disabled": "maybe"}, {"email": "x@example.com"}]
)
async def test_invalid_admin_updates_name_the_field(
    client: httpx.AsyncClient, admin: Account, alice: Account, body: dict[str, object]
) -> None:
    response = await client.patch(f"/admin/users/{alice.id}", json=body, headers=admin.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == f"body.{next(iter(body))}"
