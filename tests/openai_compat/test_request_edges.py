"""What ``POST /v1/chat/completions`` answers to requests it cannot serve, in which order it
checks them, and in which shape. The route reads its request without FastAPI's generic
handler (it is the gateway's hot path); these answers are the ones that handler gave, and
must stay so."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from mainsail.core.db import Database
from mainsail.core.principal import Role
from mainsail.identity import service as identity
from mainsail.identity.passwords import Passwords
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.identity import DEFAULT_PASSWORD
from tests.openai_compat.conftest import LiveMainsail

PATH = "/v1/chat/completions"
VALID = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}'
JSON = "application/json"
_NOT_AN_OBJECT = (
    "Invalid request: body: Input should be a valid dictionary or object to extract fields from"
)
_NO_CREDENTIALS = "Send a bearer token or an API key (Authorization: Bearer ..., or X-API-Key)."


def _error(status: int, code: str | None, param: str | None, message: str) -> dict[str, Any]:
    return {"status": status, "code": code, "param": param, "message": message}


CASES: list[tuple[str, bool, str | None, bytes, dict[str, Any]]] = [
    # (case, with credentials, content type, body, expected error)
    (
        "broken JSON, before credentials are looked at",
        False,
        JSON,
        b'{"model": ',
        _error(400, "invalid_request", "10", "Invalid request: 10: JSON decode error"),
    ),
    (
        "broken JSON",
        True,
        JSON,
        b'{"model": "fake-gpt",,}',
        _error(400, "invalid_request", "21", "Invalid request: 21: JSON decode error"),
    ),
    (
        "no credentials",
        False,
        JSON,
        VALID,
        _error(401, "not_authenticated", None, _NO_CREDENTIALS),
    ),
    (
        "no credentials and an invalid body: credentials first",
        False,
        JSON,
        b"{}",
        _error(401, "not_authenticated", None, _NO_CREDENTIALS),
    ),
    (
        "not JSON",
        True,
        "text/plain",
        VALID,
        _error(
            415,
            "unsupported_media_type",
            None,
            "Expected a JSON body (Content-Type: application/json), got text/plain",
        ),
    ),
    (
        "no content type",
        True,
        None,
        VALID,
        _error(
            415,
            "unsupported_media_type",
            None,
            "Expected a JSON body (Content-Type: application/json), got none",
        ),
    ),
    (
        "empty body",
        True,
        JSON,
        b"",
        _error(400, "invalid_request", None, "Invalid request: body: Field required"),
    ),
    (
        "a list, not an object",
        True,
        JSON,
        b"[]",
        _error(400, "invalid_request", None, _NOT_AN_OBJECT),
    ),
    (
        "null",
        True,
        JSON,
        b"null",
        _error(400, "invalid_request", None, _NOT_AN_OBJECT),
    ),
    (
        "a string",
        True,
        JSON,
        b'"hello"',
        _error(400, "invalid_request", None, _NOT_AN_OBJECT),
    ),
    (
        "bytes in no Unicode encoding",
        True,
        JSON,
        b"\xff\xfe\xfa",
        _error(400, None, None, "There was an error parsing the body"),
    ),
    (
        "a model that is not a string",
        True,
        JSON,
        b'{"model": 1, "messages": []}',
        _error(
            400,
            "invalid_request",
            "model",
            "Invalid request: model: Input should be a valid string",
        ),
    ),
    (
        "no model",
        True,
        JSON,
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        _error(400, "invalid_request", "model", "Invalid request: model: Field required"),
    ),
    (
        "a message of an unknown role",
        True,
        "application/json; charset=utf-8",
        b'{"model": "fake-gpt", "messages": [{"role": "wizard", "content": "hi"}]}',
        "see below",  # the first error of a union; its wording is pydantic's
    ),
]


@pytest.mark.parametrize(
    ("credentials", "content_type", "body", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_refusals_keep_their_order_status_and_shape(
    live: LiveMainsail,
    credentials: bool,
    content_type: str | None,
    body: bytes,
    expected: dict[str, Any] | str,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if credentials:
        headers["Authorization"] = f"Bearer {live.api_key}"
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        response = await http.post(PATH, content=body, headers=headers)
    error = response.json()["error"]
    assert response.headers["x-request-id"]
    if isinstance(expected, str):
        assert response.status_code == 400
        assert error["code"] == "invalid_request"
        assert error["param"].startswith("messages.0")
        return
    assert response.status_code == expected["status"], error
    assert error["code"] == expected["code"]
    assert error["param"] == expected["param"]
    assert error["message"] == expected["message"]
    assert set(error) == {"message", "type", "param", "code"}


async def test_a_key_without_the_chat_scope_is_refused(live: LiveMainsail) -> None:
    email = f"narrow-{uuid.uuid4().hex[:8]}@example.com"
    url = live.settings.async_database_url()
    assert url is not None
    db = Database(url, live.settings.database)
    try:
        async with db.unit_of_work() as session:
            await identity.create_user(
                session,
                Passwords(live.settings.auth),
                live.settings.auth,
                email=email,
                password=DEFAULT_PASSWORD,
                role=Role.USER,
            )
    finally:
        await db.dispose()
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        login = await http.post("/auth/login", json={"email": email, "password": DEFAULT_PASSWORD})
        created = await http.post(
            "/me/api-keys",
            json={"name": "read-only", "scopes": ["documents:read"]},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
        response = await http.post(
            PATH,
            content=VALID,
            headers={"Authorization": f"Bearer {created.json()['key']}", "Content-Type": JSON},
        )
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("insufficient_scope", "This needs the chat scope.")


@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8", "x/y+json"])
async def test_json_media_types_are_served(
    live: LiveMainsail, fake_provider: FakeProviderServer, content_type: str
) -> None:
    fake_provider.script(Reply(text="fine"))
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        response = await http.post(
            PATH,
            content=VALID,
            headers={"Authorization": f"Bearer {live.api_key}", "Content-Type": content_type},
        )
    if content_type == "x/y+json":  # not application/*: refused like any other type
        assert response.status_code == 415
        return
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fine"


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/nowhere", 404, "No route matches GET /v1/nowhere"),
        ("GET", PATH, 405, f"GET is not allowed on {PATH}"),
    ],
)
async def test_unknown_routes_and_methods_answer_in_openais_shape(
    live: LiveMainsail, method: str, path: str, status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        response = await http.request(
            method, path, headers={"Authorization": f"Bearer {live.api_key}"}
        )
        elsewhere = await http.get("/nowhere")
    assert response.status_code == status
    assert response.headers["x-request-id"]
    assert response.json() == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    # Outside /v1 the same refusal stays problem+json.
    assert elsewhere.headers["content-type"] == "application/problem+json"
    assert elsewhere.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("length", "status", "message"),
    [
        ("999999999999", 413, "The request body exceeds the limit of {limit} bytes"),
        ("many", 400, "Content-Length is not a valid number"),
    ],
)
async def test_a_body_refused_before_it_is_read_answers_in_openais_shape(
    live: LiveMainsail, length: str, status: int, message: str
) -> None:
    host, port = live.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {live.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(65_536), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if length == "many":  # the HTTP server itself may refuse a malformed header first
        assert head.split()[1] == b"400"
        return
    assert head.split()[1] == str(status).encode()
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    limit = live.settings.http.max_body_bytes
    assert error == {
        "message": message.format(limit=limit),
        "type": "invalid_request_error",
        "param": None,
        "code": "payload_too_large",
    }
