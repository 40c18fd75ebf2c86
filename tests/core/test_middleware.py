from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request

from mainsail.app import create_app
from mainsail.core.logging import get_logger
from mainsail.settings import Settings
from tests.fixtures.logs import CapturedLogs
from tests.fixtures.servers import running_server

router = APIRouter(prefix="/_probe")
calls: list[int] = []


@router.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    calls.append(1)
    get_logger("probe").info("upload_seen")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"size": size}


@pytest.fixture
def small_limit_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"http": settings.http.model_copy(update={"max_body_bytes": 2048})}
    )


@pytest.fixture
def limited_app(small_limit_settings: Settings) -> FastAPI:
    application = create_app(small_limit_settings)
    application.include_router(router)
    calls.clear()
    return application


@pytest.fixture
async def probe_client(app: FastAPI) -> httpx.AsyncClient:
    app.include_router(router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_request_id_is_generated_and_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_caller_request_id_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "edge-42:abc.DEF_1"})
    assert response.headers["x-request-id"] == "edge-42:abc.DEF_1"


@pytest.mark.parametrize(
    "supplied", ["a" * 129, "has space", "semi;colon", "new\\nline", "<script>"]
)
async def test_unsafe_or_long_request_id_is_replaced(
    client: httpx.AsyncClient, supplied: str
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": supplied})
    assert response.headers["x-request-id"] != supplied
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_request_id_is_bound_to_log_lines(
    client: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    await client.get("/health", headers={"X-Request-ID": "log-me-1"})
    (event,) = [e for e in logs.events if e["event"] == "request"]
    assert event["request_id"] == "log-me-1"
    assert (event["method"], event["path"], event["status"]) == ("GET", "/health", 200)
    assert event["duration_ms"] >= 0


async def test_every_line_during_a_request_carries_its_id(
    probe_client: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    await probe_client.post("/_probe/upload", content=b"abc", headers={"X-Request-ID": "rid-7"})
    during = [e for e in logs.events if e["event"] in ("upload_seen", "request")]
    assert [e["event"] for e in during] == ["upload_seen", "request"]
    assert all(e["request_id"] == "rid-7" for e in during)


def test_declared_oversize_body_is_refused_before_it_is_read(limited_app: FastAPI) -> None:
    with running_server(limited_app) as base:
        response = httpx.post(f"{base}/_probe/upload", content=b"x" * 4096)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"
    assert response.headers["x-request-id"]
    assert calls == []  # the route never ran


def test_streamed_oversize_body_is_cut_at_the_limit(limited_app: FastAPI) -> None:
    sent = 0

    def body() -> object:
        nonlocal sent
        for _ in range(64):
            sent += 1024
            yield b"y" * 1024

    with running_server(limited_app) as base:
        response = httpx.post(f"{base}/_probe/upload", content=body())  # chunked
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_body_within_limit_passes(limited_app: FastAPI) -> None:
    with running_server(limited_app) as base:
        response = httpx.post(f"{base}/_probe/upload", content=b"z" * 2000)
    assert response.status_code == 200
    assert response.json() == {"size": 2000}


async def test_invalid_content_length_is_bad_request(limited_app: FastAPI) -> None:
    # uvicorn's parser already refuses this; other ASGI servers may pass it through.
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/_probe/upload",
        "raw_path": b"/_probe/upload",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", b"-5")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    async with limited_app.router.lifespan_context(limited_app):
        await limited_app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["code"] == "bad_request"  # type: ignore[arg-type]
    assert calls == []
