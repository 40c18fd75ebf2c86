from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from mainsail.core.errors import AppError, Conflict, TooManyRequests
from tests.fixtures.logs import CapturedLogs

router = APIRouter(prefix="/_probe")


class Payload(BaseModel):
    email: str = Field(max_length=20)
    password: str
    count: int


class TeapotError(AppError):
    status, code, title = 418, "teapot", "I am a teapot"


@router.post("/echo")
async def echo(payload: Payload) -> dict[str, int]:
    return {"count": payload.count}


@router.get("/conflict")
async def conflict() -> None:
    raise Conflict("Already exists", extra={"existing_id": "abc"})


@router.get("/limited")
async def limited() -> None:
    raise TooManyRequests("Slow down", headers={"Retry-After": "7"})


@router.get("/teapot")
async def teapot() -> None:
    raise TeapotError()


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("internal detail: postgresql://admin:s3cret@10.0.0.5/prod")


@pytest.fixture
def probe_app(app: FastAPI) -> FastAPI:
    app.include_router(router)
    return app


@pytest.fixture
async def probe(probe_app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=probe_app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:mainsail:problem:{code}"
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


async def test_unknown_route_is_problem_404(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/no/such/thing"), 404, "not_found")
    assert body["instance"] == "/no/such/thing"
    assert "GET /no/such/thing" in str(body["detail"])


async def test_wrong_method_is_problem_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_app_error_carries_its_status_code_and_extras(probe: httpx.AsyncClient) -> None:
    body = assert_problem(await probe.get("/_probe/conflict"), 409, "conflict")
    assert body["detail"] == "Already exists"
    assert body["existing_id"] == "abc"
    assert_problem(await probe.get("/_probe/teapot"), 418, "teapot")


async def test_app_error_headers_reach_the_client(probe: httpx.AsyncClient) -> None:
    response = await probe.get("/_probe/limited")
    assert_problem(response, 429, "too_many_requests")
    assert response.headers["retry-after"] == "7"


async def test_validation_error_names_fields_without_echoing_input(
    probe: httpx.AsyncClient,
) -> None:
    response = await probe.post(
        "/_probe/echo",
        json={"email": "x" * 30, "password": "hunter2-secret", "count": "many"},
    )
    body = assert_problem(response, 422, "validation_error")
    fields = {error["field"] for error in body["errors"]}  # type: ignore[attr-defined]
    assert fields == {"body.email", "body.count"}
    assert "body.email" in str(body["detail"])
    assert "hunter2-secret" not in response.text
    assert "x" * 30 not in response.text


async def test_missing_body_fields_are_named(probe: httpx.AsyncClient) -> None:
    body = assert_problem(await probe.post("/_probe/echo", json={}), 422, "validation_error")
    fields = {error["field"] for error in body["errors"]}  # type: ignore[attr-defined]
    assert fields == {"body.email", "body.password", "body.count"}


async def test_malformed_json_is_a_problem(probe: httpx.AsyncClient) -> None:
    response = await probe.post(
        "/_probe/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation_error")


async def test_unexpected_error_is_generic_500_with_request_id(
    probe: httpx.AsyncClient, logs: CapturedLogs
) -> None:
    response = await probe.get("/_probe/boom", headers={"X-Request-ID": "trace-500"})
    body = assert_problem(response, 500, "internal_error")
    assert body["request_id"] == "trace-500"
    assert "s3cret" not in response.text
    assert "RuntimeError" not in response.text
    (logged,) = [e for e in logs.events if e["event"] == "unhandled_exception"]
    assert logged["request_id"] == "trace-500"
    assert "RuntimeError" in logged["exception"]  # the traceback stays in the logs
