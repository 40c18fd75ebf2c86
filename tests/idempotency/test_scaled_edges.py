"""The scaled shape: two app instances (replicas, or deployments) sharing one
PostgreSQL and one Redis, for idempotency keys, the response cache and request limits."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.core.cache import RedisCache
from mainsail.llm.cache import ResponseCache
from mainsail.llm.factory import build_gateway
from mainsail.llm.gateway import CallContext
from mainsail.llm.types import ChatRequest, Message, SamplingParams, StreamStart
from mainsail.settings import LLMSettings, Settings
from tests.fakes.canned import Canned, chat_chunk
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.app import make_settings
from tests.fixtures.gateway import FAST_RESILIENCE, gateway_settings
from tests.fixtures.identity import Account
from tests.fixtures.redis import REDIS_SERVER, _wait_for_redis
from tests.fixtures.servers import free_port

CHAT = "/v1/chat/completions"
ASK = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def keyed(account: Account, key: str) -> dict[str, str]:
    return {**account.headers, "Idempotency-Key": key}


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    """Another app on the same database: a second replica (or deployment)."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class PrivateRedis:
    """A redis-server of the test's own (the session's shared one must not see these keys)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_redis(self.port, self.process)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


# --- the response cache: a streamed refusal ----------------------------------------------------


REFUSED_STREAM = (
    chat_chunk({"role": "assistant", "content": None, "refusal": ""})
    + chat_chunk({"refusal": "I'm sorry, I can't help with that."})
    + chat_chunk({}, "stop")
    + "data: [DONE]\n\n"
).encode()


async def test_a_streamed_refusal_is_not_cached_for_the_other_replica(
    tmp_path: Path, redis_url: str
) -> None:
    """OpenAI streams a refusal as ``delta.refusal`` chunks and ``finish_reason: stop``: the
    stream's answer is empty, and an empty answer is not kept (the other replica, sharing the
    cache through Redis, answered the same request from it for an hour, without asking the
    provider)."""
    prefix = f"scaled-{uuid.uuid4().hex[:8]}:"
    upstream = Canned(REFUSED_STREAM, "text/event-stream")
    async with upstream as url:
        catalogue = tmp_path / "catalogue.toml"
        catalogue.write_text(
            f'[providers.canned]\nkind = "openai"\nbase_url = "{url}/v1"\n\n'
            '[models.canned-gpt]\nprovider = "canned"\nmodel = "upstream-model"\n'
        )
        settings = LLMSettings(**{**FAST_RESILIENCE, "catalogue_file": catalogue})
        built = [
            build_gateway(
                settings,
                cache=ResponseCache(RedisCache(redis_url, prefix=prefix), ttl_s=60),
                environ={},
            )
            for _ in range(2)
        ]
        ask = ChatRequest(
            model="canned-gpt",
            messages=(Message(role="user", content="Do a bad thing"),),
            params=SamplingParams(temperature=0),
        )
        ctx = CallContext(user_id=uuid.uuid4())
        try:
            (one, _), (two, _) = built
            first = [event async for event in one.stream(ask, ctx)]
            assert isinstance(first[0], StreamStart)
            assert not first[0].cache_hit
            second = [event async for event in two.stream(ask, ctx)]
            assert isinstance(second[0], StreamStart)
            assert not second[0].cache_hit  # an empty "answer" from the cache
        finally:
            for gateway, adapters in built:
                for adapter in adapters:
                    await adapter.aclose()
                if gateway.cache is not None:
                    await gateway.cache.aclose()
        assert upstream.requests == 2


async def test_a_502_invalid_model_output_is_not_answered_again_from_the_cache(
    app: FastAPI,
    database_url: URL,
    catalogue_file: Path,
    redis_url: str,
    alice: Account,
    fake_provider: FakeProviderServer,
) -> None:
    """/analyze at its default temperature 0: three answers that do not validate end in 502
    ``invalid_model_output``, and the Idempotency-Key is released so that "a retry runs
    afresh". A rejected answer is dropped from the response cache (shared through Redis):
    the retry on the other replica asks the model again (it got the same 502 from the cache,
    with no model call, for an hour)."""
    settings = gateway_settings(
        database_url,
        catalogue_file,
        analysis={"model": "fake-gpt"},
        response_cache={"storage_url": redis_url, "key_prefix": f"scaled-{uuid.uuid4().hex[:8]}"},
    )
    sentiment = {"label": "positive", "score": 0.9, "rationale": "Kind words."}
    fake_provider.script(*[Reply(text="not json")] * 3, Reply(text=json.dumps(sentiment)))
    ask = {"task": "sentiment", "input": "Lovely stay.", "options": {}}
    async with (
        running(settings) as one,
        running(settings) as two,
        client_for(one) as first,
        client_for(two) as second,
    ):
        failed = await first.post("/analyze", json=ask, headers=keyed(alice, "an-retry"))
        assert failed.status_code == 502, failed.text
        assert failed.json()["code"] == "invalid_model_output"
        assert fake_provider.count("/chat/completions") == 3
        retried = await second.post("/analyze", json=ask, headers=keyed(alice, "an-retry"))
    assert "idempotent-replayed" not in retried.headers  # the key was released, as documented
    assert fake_provider.count("/chat/completions") >= 4  # the retry asked the model again
    assert retried.status_code == 200, retried.text


async def test_deployments_sharing_one_redis_do_not_share_sign_in_counters(
    app: FastAPI, database_url: URL, private_redis: PrivateRedis, alice: Account
) -> None:
    """``RATE_LIMIT__KEY_PREFIX`` is the counters' namespace "so deployments can share one
    Redis". The sign-in throttle's counters are in it too (they were not: password guesses
    against one deployment locked the same address out of the other)."""

    def deployment(prefix: str) -> Settings:
        return make_settings(
            database_url,
            rate_limit={"storage_url": private_redis.url, "key_prefix": prefix},
            auth={"login_max_failures_per_account": 3},
        )

    async with (
        running(deployment("staging")) as staging,
        running(deployment("prod")) as prod,
        client_for(staging) as on_staging,
        client_for(prod) as on_prod,
    ):
        for attempt in range(3):
            guess = {"email": alice.email, "password": f"wrong-{attempt}"}
            assert (await on_staging.post("/auth/login", json=guess)).status_code == 401
        assert (
            await on_staging.post("/auth/login", json={"email": alice.email, "password": "x"})
        ).status_code == 429  # staging's own limit works
        signed_in = await on_prod.post(
            "/auth/login", json={"email": alice.email, "password": alice.password}
        )
    assert signed_in.status_code == 200, signed_in.text
