"""The cache's parts: the memory store's bounds, Cache-Control parsing, and the Redis store
shared by two gateways (the scaled shape) or unreachable (a miss, never an error)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mainsail.core.cache import MemoryCache, RedisCache, open_cache
from mainsail.llm.cache import ResponseCache, cache_mode
from mainsail.llm.factory import build_gateway
from mainsail.llm.gateway import CallContext, Gateway, UsageEvent
from mainsail.llm.types import ChatRequest, Message, SamplingParams
from mainsail.settings import LLMSettings
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import FAST_RESILIENCE
from tests.fixtures.servers import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(clock=clock)
    await cache.set("a", b"1", ttl_s=10)
    clock.now += 9.9
    assert await cache.get("a") == b"1"
    clock.now += 0.2
    assert await cache.get("a") is None
    assert len(cache) == 0
    assert cache.size == 0


async def test_memory_drops_the_least_recently_used_beyond_its_bounds() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=10)
    await cache.set("a", b"1", 60)
    await cache.set("b", b"2", 60)
    assert await cache.get("a") == b"1"  # "b" is now the least recently used
    await cache.set("c", b"3", 60)
    assert await cache.get("b") is None
    assert {await cache.get("a"), await cache.get("c")} == {b"1", b"3"}
    await cache.set("big", b"x" * 9, 60)  # 11 bytes with the others: the oldest goes
    assert await cache.get("a") is None
    assert await cache.get("c") == b"3"
    assert await cache.get("big") == b"x" * 9
    await cache.set("huge", b"x" * 11, 60)  # larger than the whole cache: not kept
    assert await cache.get("huge") is None
    assert cache.size == 10


@pytest.mark.parametrize(
    ("header", "mode"),
    [
        (None, "use"),
        ("", "use"),
        ("max-age=60", "use"),
        ("no-cache", "refresh"),
        ("No-Cache", "refresh"),
        ("max-age=0", "refresh"),
        ("private, no-cache", "refresh"),
        ("no-store", "off"),
        ("no-cache, no-store", "off"),
    ],
)
def test_cache_control_decides_the_mode(header: str | None, mode: str) -> None:
    assert cache_mode(header) == mode


def test_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        open_cache("memcached://localhost", prefix="x:")


ASK = ChatRequest(
    model="fake-gpt",
    messages=(Message(role="user", content="Name a prime."),),
    params=SamplingParams(temperature=0),
)
ALICE = CallContext(user_id=uuid.uuid4())


class Sink:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def record(self, event: UsageEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def gateways(catalogue_file: Path) -> AsyncIterator[list[tuple[Gateway, Sink]]]:
    """Gateways built like the app builds them; a test appends, the fixture closes."""
    made: list[tuple[Gateway, Sink]] = []
    yield made
    for gateway, _ in made:
        for client in {*gateway.adapters}:
            await client.aclose()
        if gateway.cache is not None:
            await gateway.cache.aclose()


def make(catalogue_file: Path, cache: ResponseCache) -> tuple[Gateway, Sink]:
    settings = LLMSettings(**{**FAST_RESILIENCE, "catalogue_file": catalogue_file})
    sink = Sink()
    gateway, adapters = build_gateway(settings, usage=sink, cache=cache, environ={})
    gateway.adapters = adapters  # type: ignore[attr-defined]
    return gateway, sink


async def test_replicas_share_answers_through_redis(
    redis_url: str,
    catalogue_file: Path,
    fake_provider: FakeProviderServer,
    gateways: list[tuple[Gateway, Sink]],
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    for _ in range(2):
        gateways.append(
            make(catalogue_file, ResponseCache(RedisCache(redis_url, prefix=prefix), ttl_s=60))
        )
    (one, _one_sink), (two, two_sink) = gateways
    fake_provider.script(Reply(text="7"))
    first = await one.complete(ASK, ALICE)
    second = await two.complete(ASK, ALICE)
    assert fake_provider.count() == 1
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert second.message.content == first.message.content == "7"
    assert two_sink.events[0].cache_hit
    assert two_sink.events[0].cost_usd == 0
    # Another caller's identical request is not served from alice's answer.
    other = await two.complete(ASK, CallContext(user_id=uuid.uuid4()))
    assert not other.cache_hit
    assert fake_provider.count() == 2


async def test_an_unreachable_redis_is_a_miss_not_an_error(
    catalogue_file: Path, fake_provider: FakeProviderServer, gateways: list[tuple[Gateway, Sink]]
) -> None:
    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", prefix="x:", timeout_s=0.2)
    gateways.append(make(catalogue_file, ResponseCache(down, ttl_s=60)))
    gateway, sink = gateways[0]
    for _ in range(2):
        response = await gateway.complete(ASK, ALICE)
        assert response.message.content
        assert not response.cache_hit
    assert fake_provider.count() == 2
    assert [event.status for event in sink.events] == ["ok", "ok"]


async def test_the_prompt_version_is_part_of_the_key(
    catalogue_file: Path, fake_provider: FakeProviderServer, gateways: list[tuple[Gateway, Sink]]
) -> None:
    gateways.append(make(catalogue_file, ResponseCache(MemoryCache(), ttl_s=60)))
    gateway, _ = gateways[0]
    await gateway.complete(ASK, CallContext(user_id=ALICE.user_id, prompt_version="summary@1"))
    await gateway.complete(ASK, CallContext(user_id=ALICE.user_id, prompt_version="summary@2"))
    assert fake_provider.count() == 2
    again = await gateway.complete(
        ASK, CallContext(user_id=ALICE.user_id, prompt_version="summary@2")
    )
    assert again.cache_hit
    assert fake_provider.count() == 2
