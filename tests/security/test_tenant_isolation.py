"""Tenant isolation: for every route that takes a resource id, another user learns nothing.

THE TABLE BELOW IS SHARED: every later route that takes a resource id adds a row, and
``test_every_id_route_is_in_the_table`` fails until it does.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.documents.conftest import wait_for_status
from tests.fixtures.identity import Account, create_api_key

MakeResource = Callable[[httpx.AsyncClient, Account], Awaitable[str]]


async def api_key_of(client: httpx.AsyncClient, owner: Account) -> str:
    return str((await create_api_key(client, owner))["id"])


async def the_user(client: httpx.AsyncClient, owner: Account) -> str:
    return str(owner.id)


async def api_key_still_there(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get(f"/me/api-keys/{ident}", headers=owner.headers)
    return response.status_code == 200


async def account_still_active(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get("/me", headers=owner.headers)
    return response.status_code == 200 and response.json()["disabled"] is False


async def document_of(client: httpx.AsyncClient, owner: Account) -> str:
    created = await client.post(
        "/documents",
        json={"text": f"Private notes of {owner.email}.", "filename": "private.txt"},
        headers=owner.headers,
    )
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


async def job_of(client: httpx.AsyncClient, owner: Account) -> str:
    document = await client.get(
        f"/documents/{await document_of(client, owner)}", headers=owner.headers
    )
    return str(document.json()["job_id"])


async def document_still_there(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get(f"/documents/{ident}", headers=owner.headers)
    return response.status_code == 200


async def document_unchanged(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get(f"/documents/{ident}", headers=owner.headers)
    return response.status_code == 200 and response.json()["metadata"] == {}


async def job_still_there(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get(f"/jobs/{ident}", headers=owner.headers)
    return response.status_code == 200


async def conversation_of(client: httpx.AsyncClient, owner: Account) -> str:
    asked = await client.post(
        "/chat", json={"question": f"What did {owner.email} write?"}, headers=owner.headers
    )
    assert asked.status_code == 200, asked.text
    return str(asked.json()["conversation_id"])


async def conversation_still_there(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.get(f"/conversations/{ident}", headers=owner.headers)
    return response.status_code == 200


async def index_version_of(client: httpx.AsyncClient, owner: Account) -> str:
    """The version the owner's searches are served from (index versions are shared)."""
    await document_of(client, owner)
    response = await client.post("/search", json={"query": "notes"}, headers=owner.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["index_version"])


async def index_version_still_active(client: httpx.AsyncClient, owner: Account, ident: str) -> bool:
    response = await client.post("/search", json={"query": "notes"}, headers=owner.headers)
    return response.status_code == 200 and str(response.json()["index_version"]) == ident


@dataclass(frozen=True)
class IsolatedRoute:
    method: str
    path: str  # with {id} where the resource id goes
    make: MakeResource  # creates the owner's resource, returns its id
    intact: Callable[[httpx.AsyncClient, Account, str], Awaitable[bool]]
    body: dict[str, Any] | None = None
    # What another user gets: 404 (no existence oracle), or 403 on admin-only routes, where
    # the refusal does not depend on the id at all.
    expected: int = 404


ISOLATED_ROUTES = [
    IsolatedRoute("GET", "/me/api-keys/{id}", api_key_of, api_key_still_there),
    IsolatedRoute("DELETE", "/me/api-keys/{id}", api_key_of, api_key_still_there),
    IsolatedRoute("GET", "/admin/users/{id}", the_user, account_still_active, expected=403),
    IsolatedRoute(
        "PATCH",
        "/admin/users/{id}",
        the_user,
        account_still_active,
        body={"disabled": True},
        expected=403,
    ),
    IsolatedRoute("GET", "/admin/users/{id}/quota", the_user, account_still_active, expected=403),
    IsolatedRoute("GET", "/documents/{id}", document_of, document_still_there),
    IsolatedRoute("DELETE", "/documents/{id}", document_of, document_still_there),
    IsolatedRoute(
        "PATCH",
        "/documents/{id}",
        document_of,
        document_unchanged,
        body={"metadata": {"owner": "someone else"}},
    ),
    IsolatedRoute("GET", "/jobs/{id}", job_of, job_still_there),
    IsolatedRoute("GET", "/conversations/{id}", conversation_of, conversation_still_there),
    IsolatedRoute("DELETE", "/conversations/{id}", conversation_of, conversation_still_there),
    IsolatedRoute("POST", "/admin/jobs/{id}/requeue", job_of, job_still_there, expected=403),
    IsolatedRoute(
        "GET",
        "/admin/index-versions/{id}",
        index_version_of,
        index_version_still_active,
        expected=403,
    ),
    IsolatedRoute(
        "POST",
        "/admin/index-versions/{id}/activate",
        index_version_of,
        index_version_still_active,
        expected=403,
    ),
    IsolatedRoute(
        "POST",
        "/admin/index-versions/{id}/retire",
        index_version_of,
        index_version_still_active,
        expected=403,
    ),
    IsolatedRoute(
        "PUT",
        "/admin/users/{id}/quota",
        the_user,
        account_still_active,
        body={"monthly_tokens": 0},
        expected=403,
    ),
]


@pytest.mark.parametrize(
    "route", ISOLATED_ROUTES, ids=[f"{r.method} {r.path}" for r in ISOLATED_ROUTES]
)
async def test_other_users_resource_is_indistinguishable_from_a_missing_one(
    client: httpx.AsyncClient, alice: Account, bob: Account, route: IsolatedRoute
) -> None:
    ident = await route.make(client, alice)

    async def as_bob(target: str) -> httpx.Response:
        return await client.request(
            route.method, route.path.format(id=target), headers=bob.headers, json=route.body
        )

    on_alices = await as_bob(ident)
    on_missing = await as_bob(str(uuid.uuid4()))
    assert on_alices.status_code == route.expected, on_alices.text
    assert on_missing.status_code == route.expected
    assert on_alices.json()["code"] == on_missing.json()["code"]
    assert on_alices.json()["detail"] == on_missing.json()["detail"]
    assert await route.intact(client, alice, ident)


def _id_routes(app: FastAPI) -> set[tuple[str, str]]:
    found = set()
    for path, operations in app.openapi()["paths"].items():
        if "{" in path:
            generic = re.sub(r"\{[^}]+\}", "{id}", path)
            found |= {(method.upper(), generic) for method in operations}
    return found


# Routes whose id names no one's resource: the same answer for every caller.
SHARED_ROUTES = {("GET", "/v1/models/{id}")}  # the catalogue's models


def test_every_id_route_is_in_the_table(app: FastAPI) -> None:
    listed = {(route.method, route.path) for route in ISOLATED_ROUTES}
    missing = _id_routes(app) - listed - SHARED_ROUTES
    assert not missing, f"add these routes to ISOLATED_ROUTES: {sorted(missing)}"


# Ids in request bodies: another user's id finds what a random one finds (nothing), and
# the owner's own request shows the id is real.


async def test_another_users_conversation_id_in_a_chat_body_is_a_plain_404(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    conversation = await conversation_of(client, alice)
    for path in ("/chat", "/chat/stream"):
        answers = [
            await client.post(
                path,
                json={"question": "And then?", "conversation_id": target},
                headers=bob.headers,
            )
            for target in (conversation, str(uuid.uuid4()))
        ]
        assert [a.status_code for a in answers] == [404, 404], path
        assert answers[0].json()["detail"] == answers[1].json()["detail"]
    own = await client.post(
        "/chat",
        json={"question": "And then?", "conversation_id": conversation},
        headers=alice.headers,
    )
    assert own.status_code == 200, own.text


async def test_another_users_document_id_in_search_filters_finds_nothing(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    document = await document_of(client, alice)
    await wait_for_status(client, alice, document, "ready")

    async def search(who: Account, ident: str) -> list[Any]:
        found = await client.post(
            "/search",
            json={"query": "private notes", "filters": {"document_ids": [ident]}},
            headers=who.headers,
        )
        assert found.status_code == 200, found.text
        return list(found.json()["results"])

    assert await search(alice, document)  # the id is real and searchable
    assert await search(bob, document) == []
    assert await search(bob, str(uuid.uuid4())) == []
