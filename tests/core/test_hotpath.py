"""The gateway's hot path through the app: the hot routes' short way in (the same answers as
the usual way, errors included), and FastAPI's telemetry checks only where something collects."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import NoOpTracerProvider

from mainsail import app as app_module
from mainsail.app import create_app, fastapi_telemetry
from mainsail.core.errors import AppError, NotFound, install_error_handlers
from mainsail.core.hotpath import HotRoutes
from mainsail.openai_compat import router as openai_router
from mainsail.settings import Settings

_SEEN: list[str] = []


async def _hot(request: Request) -> Response:
    _SEEN.append(request.url.path)
    body = await request.body()
    if body == b"missing":
        raise NotFound("nothing here")
    if body == b"crash":
        raise RuntimeError("internal detail")
    return JSONResponse({"echo": body.decode(), "route_params": request.path_params})


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/hot")
    async def usual(request: Request) -> dict[str, str]:
        return {"via": "router"}

    @app.get("/hot")
    async def read(request: Request) -> dict[str, str]:
        return {"via": "router"}

    app.add_middleware(HotRoutes, owner=app, lanes={("POST", "/hot"): _hot})
    return app


@pytest.fixture
async def hot_client() -> httpx.AsyncClient:
    _SEEN.clear()
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_the_exact_method_and_path_go_straight_to_the_handler(
    hot_client: httpx.AsyncClient,
) -> None:
    answer = await hot_client.post("/hot", content=b"hi")
    assert answer.json() == {"echo": "hi", "route_params": {}}
    assert _SEEN == ["/hot"]
    # Another method, or another path, takes the usual way.
    assert (await hot_client.get("/hot")).json() == {"via": "router"}
    assert (await hot_client.post("/hot/")).status_code in (307, 404)
    assert _SEEN == ["/hot"]


async def test_errors_are_answered_by_the_apps_own_handlers(
    hot_client: httpx.AsyncClient,
) -> None:
    missing = await hot_client.post("/hot", content=b"missing")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["code"] == NotFound.code
    crash = await hot_client.post("/hot", content=b"crash")  # the outermost catch-all's
    assert crash.status_code == 500
    assert crash.json()["code"] == AppError.code
    assert "internal detail" not in crash.text


async def test_a_root_path_is_not_part_of_the_route() -> None:
    transport = httpx.ASGITransport(app=_app(), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        _SEEN.clear()
        answer = await client.post("/api/hot", content=b"x")
    assert answer.json()["echo"] == "x"
    assert _SEEN == ["/api/hot"]


def test_the_gateway_route_is_not_made_hot_if_its_router_gains_a_dependency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert set(openai_router.hot_routes()) == {("POST", "/v1/chat/completions")}
    extra = Depends(lambda: None)
    monkeypatch.setattr(
        openai_router.router, "dependencies", [*openai_router.router.dependencies, extra]
    )
    with pytest.raises(RuntimeError, match="dependencies"):
        openai_router.hot_routes()


def test_fastapis_telemetry_is_on_only_for_signals_an_sdk_was_set_up_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    # Nothing set up (the test process has only the API's stand-ins): every signal off, so
    # FastAPI does not ask the providers again on each request.
    assert fastapi_telemetry() == {"tracing": False, "metrics": False, "logs": False}
    monkeypatch.setattr(app_module.otel_trace, "get_tracer_provider", NoOpTracerProvider)
    assert fastapi_telemetry() == {"tracing": True, "metrics": False, "logs": False}
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")  # FastAPI sets it up itself
    assert fastapi_telemetry() == {}


def test_the_hot_route_is_left_out_while_fastapis_telemetry_is_on(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    def hot(app: FastAPI) -> bool:
        return any(middleware.cls is HotRoutes for middleware in app.user_middleware)

    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    assert hot(create_app(settings))
    monkeypatch.setattr(app_module.otel_trace, "get_tracer_provider", NoOpTracerProvider)
    assert not hot(create_app(settings))
