"""Malformed requests get 422 (or 415) problem+json naming the field; nothing else happens."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.identity import Account


def fields_of(response: httpx.Response) -> set[str]:
    return {error["field"] for error in response.json()["errors"]}


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "a@", "@example.com", "a b@example.com", "x" * 250 + "@example.com", ""],
)
async def test_malformed_emails_are_422_naming_the_field(
    client: httpx.AsyncClient, email: str
) -> None:
    response = await client.post("/auth/login", json={"email": email, "password": "pw-pw-pw-pw"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert fields_of(response) == {"body.email"}


async def test_over_long_password_is_refused_before_hashing(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/login", json={"email": "a@example.com", "password": "p" * 4097}
    )
    assert response.status_code == 422
    assert fields_of(response) == {"body.password"}


async def test_missing_fields_are_each_named(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/login", json={})
    assert response.status_code == 422
    assert fields_of(response) == {"body.email", "body.password"}


async def test_extra_fields_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/auth/login",
        json={"email": "a@example.com", "password": "pw-pw-pw-pw", "role": "admin"},
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "body.role"
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        ('{"email": "a@example.com", "password": "pw-pw-pw-pw"}', "text/plain"),
        ("email=a%40example.com&password=pw", "application/x-www-form-urlencoded"),
        ('{"email": "a@example.com"}', None),
    ],
)
async def test_non_json_bodies_are_415(
    client: httpx.AsyncClient, content: str, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request("POST", "/auth/login", content=content, headers=headers)
    if content_type is None:
        request.headers.pop("content-type", None)
    response = await client.send(request)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_json_that_is_not_an_object_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/login", json=["a@example.com", "pw"])
    assert response.status_code == 422


async def test_admin_create_validates_every_field(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.post(
        "/admin/users",
        json={"email": "nope", "password": "p" * 5000, "role": "root", "team": "x"},
        headers=admin.headers,
    )
    assert response.status_code == 422
    assert fields_of(response) == {"body.email", "body.password", "body.role", "body.team"}


async def test_admin_create_applies_the_password_policy(
    client: httpx.AsyncClient, admin: Account
) -> None:
    response = await client.post(
        "/admin/users", json={"email": "n@example.com", "password": "short"}, headers=admin.headers
    )
    assert response.status_code == 422
    assert fields_of(response) == {"body.password"}
