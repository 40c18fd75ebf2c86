"""Request limits through the real app: counting, isolation, answers and headers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.settings import Settings
from tests.fixtures.identity import Account, MakeAccount, create_api_key
from tests.fixtures.logs import CapturedLogs
from tests.fixtures.servers import free_port
from tests.ratelimits.conftest import limited_settings

HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
BOTH_STORAGES = pytest.mark.parametrize("storage", ["memory", "redis"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def burst(
    client: httpx.AsyncClient, n: int, path: str, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    return list(await asyncio.gather(*(client.get(path, headers=headers) for _ in range(n))))


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def assert_sane_refusal(response: httpx.Response, *, limit: int, window_s: int) -> None:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window_s
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) == retry_after


@asynccontextmanager
async def client_for(app: FastAPI, ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    """Another app on the same database and settings: a second worker or replica."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


# --- counting ------------------------------------------------------------------------------


@BOTH_STORAGES
@pytest.mark.parametrize(
    "rate_limit",
    [
        {"user": "10/minute", "strategy": "moving-window"},
        {"user": "10/minute", "strategy": "sliding-window-counter"},
    ],
    ids=["moving-window", "sliding-window-counter"],
)
async def test_exactly_the_limit_passes_under_concurrency(
    client: httpx.AsyncClient,
    alice: Account,
    storage: str,
    key_prefix: str,
    request: pytest.FixtureRequest,
) -> None:
    key = (await create_api_key(client, alice))["key"]
    responses = await burst(client, 30, "/me", bearer(key))
    if storage == "redis":  # the counters really are in Redis
        redis = Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            assert await redis.keys(f"*{key_prefix}*")
        finally:
            await redis.aclose()
    assert statuses(responses) == {200: 10, 429: 20}
    for response in responses:
        assert response.headers["ratelimit-limit"] == "10"
        if response.status_code == 429:
            assert_sane_refusal(response, limit=10, window_s=60)
        else:
            assert 0 <= int(response.headers["ratelimit-remaining"]) <= 9
            assert 0 <= int(response.headers["ratelimit-reset"]) <= 60
    # Still full afterwards: refusals did not free anything.
    assert (await client.get("/me", headers=bearer(key))).status_code == 429


async def test_replicas_sharing_redis_share_one_limit(
    database_url: URL, redis_url: str, key_prefix: str, make_account: MakeAccount
) -> None:
    settings = limited_settings(database_url, redis_url, key_prefix, user="10/minute")
    alice = await make_account(email="alice@example.com")
    async with (
        running(settings) as one,
        running(settings) as two,
        client_for(one) as first,
        client_for(two) as second,
    ):
        key = (await create_api_key(first, alice))["key"]
        before = [await first.get("/me", headers=bearer(key)) for _ in range(4)]
        assert statuses(before) == {200: 4}
        # Separate counters would let the second replica pass up to 10 of its own.
        groups = await asyncio.gather(
            burst(first, 15, "/me", bearer(key)), burst(second, 15, "/me", bearer(key))
        )
    answers = [response for group in groups for response in group]
    assert statuses(answers) == {200: 6, 429: 24}


@pytest.mark.parametrize("rate_limit", [{"user": "5/minute"}])
async def test_successful_responses_carry_the_headers(
    client: httpx.AsyncClient, alice: Account
) -> None:
    key = (await create_api_key(client, alice))["key"]
    remaining = []
    for _ in range(5):
        response = await client.get("/me", headers=bearer(key))
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "5"
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
        assert "retry-after" not in response.headers
        remaining.append(int(response.headers["ratelimit-remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    assert_sane_refusal(await client.get("/me", headers=bearer(key)), limit=5, window_s=60)


@pytest.mark.parametrize("rate_limit", [{"user": "5/minute;3/hour"}])
async def test_several_limits_apply_and_the_closest_is_reported(
    client: httpx.AsyncClient, alice: Account
) -> None:
    key = (await create_api_key(client, alice))["key"]
    passed = [await client.get("/me", headers=bearer(key)) for _ in range(3)]
    assert [r.status_code for r in passed] == [200, 200, 200]
    assert [r.headers["ratelimit-limit"] for r in passed] == ["3", "3", "3"]
    assert [r.headers["ratelimit-remaining"] for r in passed] == ["2", "1", "0"]
    assert_sane_refusal(await client.get("/me", headers=bearer(key)), limit=3, window_s=3600)


# --- who counts -----------------------------------------------------------------------------


@BOTH_STORAGES
@pytest.mark.parametrize("rate_limit", [{"user": "3/minute", "anonymous": "1000/minute"}])
async def test_one_caller_running_out_leaves_the_others_alone(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    alice_key = (await create_api_key(client, alice))["key"]
    bob_key = (await create_api_key(client, bob))["key"]
    assert statuses(await burst(client, 6, "/me", bearer(alice_key))) == {200: 3, 429: 3}
    bob_answer = await client.get("/me", headers=bearer(bob_key))
    assert bob_answer.status_code == 200
    assert bob_answer.headers["ratelimit-remaining"] == "2"
    # Alice's session is another principal than her key; anonymous callers count per address.
    assert (await client.get("/me", headers=alice.headers)).status_code == 200
    assert (await client.get("/me")).status_code == 401


@pytest.mark.parametrize("rate_limit", [{"user": "2/minute", "admin": "4/minute"}])
async def test_admins_have_their_own_limit(
    client: httpx.AsyncClient, alice: Account, admin: Account
) -> None:
    alice_answers = [await client.get("/me", headers=alice.headers) for _ in range(3)]
    assert [r.status_code for r in alice_answers] == [200, 200, 429]
    assert alice_answers[0].headers["ratelimit-limit"] == "2"
    admin_answers = [await client.get("/me", headers=admin.headers) for _ in range(5)]
    assert [r.status_code for r in admin_answers] == [200, 200, 200, 200, 429]
    assert admin_answers[0].headers["ratelimit-limit"] == "4"
    assert_sane_refusal(admin_answers[-1], limit=4, window_s=60)


@pytest.mark.parametrize("rate_limit", [{"user": "2/minute", "admin": ""}])
async def test_an_empty_role_limit_means_unlimited(
    client: httpx.AsyncClient, admin: Account
) -> None:
    answers = await burst(client, 10, "/me", admin.headers)
    assert statuses(answers) == {200: 10}
    assert not any(name in answers[0].headers for name in HEADERS)


@BOTH_STORAGES
@pytest.mark.parametrize("rate_limit", [{"anonymous": "3/minute"}])
async def test_anonymous_callers_are_limited_per_address(app: FastAPI) -> None:
    async with client_for(app, "203.0.113.7") as first, client_for(app, "203.0.113.8") as other:
        answers = [await first.get("/me") for _ in range(4)]
        assert [r.status_code for r in answers] == [401, 401, 401, 429]
        assert [r.headers["ratelimit-remaining"] for r in answers[:3]] == ["2", "1", "0"]
        assert_sane_refusal(answers[-1], limit=3, window_s=60)
        assert (await other.get("/me")).status_code == 401


@pytest.mark.parametrize("rate_limit", [{"anonymous": "3/minute"}])
async def test_failed_authentication_counts_against_the_address(app: FastAPI) -> None:
    bogus = bearer("msk_000000000000_" + "x" * 43)
    async with client_for(app, "198.51.100.1") as http:
        answers = [await http.get("/me", headers=bogus) for _ in range(3)]
        assert [r.status_code for r in answers] == [401, 401, 401]
        assert answers[0].headers["ratelimit-limit"] == "3"
        assert (await http.get("/me", headers=bearer("not-a-jwt"))).status_code == 429
        assert (await http.get("/me", headers={"Authorization": "Basic x"})).status_code == 429
        assert (await http.get("/me")).status_code == 429


@pytest.mark.parametrize("rate_limit", [{"anonymous": "2/minute", "forwarded_for_hops": 1}])
async def test_trusted_proxy_address_is_used_and_the_spoofable_part_ignored(
    app: FastAPI,
) -> None:
    async with client_for(app, "10.0.0.1") as proxy:
        for spoofed in ("6.6.6.6", "7.7.7.7"):
            headers = {"X-Forwarded-For": f"{spoofed}, 192.0.2.10"}
            assert (await proxy.get("/me", headers=headers)).status_code == 401
        headers = {"X-Forwarded-For": "8.8.8.8, 192.0.2.10"}
        assert (await proxy.get("/me", headers=headers)).status_code == 429
        another = {"X-Forwarded-For": "192.0.2.11"}
        assert (await proxy.get("/me", headers=another)).status_code == 401


@pytest.mark.parametrize("rate_limit", [{"anonymous": "2/minute"}])
async def test_forwarded_for_is_ignored_by_default(app: FastAPI) -> None:
    async with client_for(app, "10.0.0.1") as http:
        answers = [
            await http.get("/me", headers={"X-Forwarded-For": f"192.0.2.{n}"}) for n in range(3)
        ]
    assert [r.status_code for r in answers] == [401, 401, 429]


# --- exemptions, answers, switches ----------------------------------------------------------


@pytest.mark.parametrize("rate_limit", [{"anonymous": "1/minute"}])
async def test_health_and_ready_are_not_limited(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready"):
        for _ in range(5):
            response = await client.get(path)
            assert response.status_code == 200, response.text
            assert not any(name in response.headers for name in HEADERS)
    assert [(await client.get("/me")).status_code for _ in range(2)] == [401, 429]


@pytest.mark.parametrize("rate_limit", [{"anonymous": "1/minute", "exempt_paths": ["/me*"]}])
async def test_exempt_paths_are_a_setting(client: httpx.AsyncClient) -> None:
    assert [(await client.get("/me")).status_code for _ in range(3)] == [401, 401, 401]
    assert [(await client.get("/health")).status_code for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("rate_limit", [{"user": "1/minute"}])
async def test_v1_refusal_has_openais_error_shape(
    client: httpx.AsyncClient, alice: Account
) -> None:
    key = (await create_api_key(client, alice))["key"]
    assert (await client.get("/v1/models", headers=bearer(key))).status_code == 200
    refused = await client.get("/v1/models", headers=bearer(key))
    assert_sane_refusal(refused, limit=1, window_s=60)
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["param"] is None
    assert "1 per minute" in body["error"]["message"]
    assert len(refused.headers.get_list("x-request-id")) == 1


@pytest.mark.parametrize("rate_limit", [{"user": "1/minute"}])
async def test_refusal_elsewhere_is_problem_json(client: httpx.AsyncClient, alice: Account) -> None:
    assert (await client.get("/me", headers=alice.headers)).status_code == 200
    refused = await client.get("/me", headers={**alice.headers, "X-Request-ID": "rl-1"})
    assert_sane_refusal(refused, limit=1, window_s=60)
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "urn:mainsail:problem:rate_limited"
    assert body["status"] == 429
    assert body["code"] == "rate_limited"
    assert body["instance"] == "/me"
    assert body["request_id"] == "rl-1"
    assert refused.headers.get_list("x-request-id") == ["rl-1"]


@pytest.mark.parametrize("rate_limit", [{"enabled": False, "user": "1/minute"}])
async def test_disabled_limits_nothing(client: httpx.AsyncClient, alice: Account) -> None:
    answers = await burst(client, 5, "/me", alice.headers)
    assert statuses(answers) == {200: 5}
    assert not any(name in answers[0].headers for name in HEADERS)


async def test_an_unreachable_redis_lets_requests_through(
    database_url: URL, key_prefix: str, logs: CapturedLogs
) -> None:
    settings = limited_settings(
        database_url, f"redis://127.0.0.1:{free_port()}/0", key_prefix, anonymous="1/minute"
    )
    async with running(settings) as app, client_for(app) as http:
        answers = [await http.get("/me") for _ in range(3)]
    assert [r.status_code for r in answers] == [401, 401, 401]
    assert not any(name in answers[0].headers for name in HEADERS)
    warnings = [e for e in logs.events if e.get("event") == "rate_limit_storage_unavailable"]
    assert len(warnings) == 1  # logged once, not once per request
