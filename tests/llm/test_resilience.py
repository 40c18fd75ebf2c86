"""Retries, circuit breaking, fallback, timeouts and bounded concurrency, each counted at the
fake upstream."""

from __future__ import annotations

import asyncio
import time

import pytest

from mainsail.llm.errors import (
    CircuitOpen,
    StreamInterrupted,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.gateway import CallContext
from mainsail.llm.types import ChatRequest, Message, StreamEnd, StreamStart, TextDelta
from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.llm.conftest import MakeGateway

CTX = CallContext(request_id="test")


def ask(model: str = "fake-gpt", text: str = "hello") -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", content=text),))


async def test_retryable_failures_are_retried_until_success(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Fault("server_error"), Fault("rate_limit"), Reply(text="third time"))
    response = await gateway.complete(ask(), CTX)
    assert response.message.content == "third time"
    assert fake_provider.count() == 3
    assert sink.events[-1].status == "ok"


async def test_a_rejected_request_is_never_retried(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Fault("bad_request"))
    with pytest.raises(UpstreamRejected):
        await gateway.complete(ask(), CTX)
    assert fake_provider.count() == 1
    assert sink.events[-1].status == "error"
    assert sink.events[-1].error_code == "upstream_rejected"


async def test_retries_give_up_after_the_attempt_limit(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    fake_provider.script(*[Fault("server_error")] * 5)
    with pytest.raises(UpstreamUnavailable):
        await gateway.complete(ask(), CTX)
    assert fake_provider.count() == 3


async def test_retry_after_is_honoured(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    fake_provider.script(Fault("rate_limit", retry_after=0.3), Reply(text="ok"))
    started = time.perf_counter()
    await gateway.complete(ask(), CTX)
    assert time.perf_counter() - started >= 0.3
    assert fake_provider.count() == 2


async def test_a_long_retry_after_moves_on_to_the_fallback_instead_of_waiting(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Fault("rate_limit", retry_after=60), Reply(text="from claude"))
    started = time.perf_counter()
    response = await gateway.complete(ask("fake-gpt-with-fallback"), CTX)
    assert time.perf_counter() - started < 5
    assert response.model == "fake-claude"
    assert [c.path for c in fake_provider.calls] == ["/v1/chat/completions", "/v1/messages"]
    assert sink.events[-1].fallback_used is True
    assert sink.events[-1].requested_model == "fake-gpt-with-fallback"


async def test_fallback_after_retries_are_exhausted(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    fake_provider.script(*[Fault("server_error")] * 3, Reply(text="claude saves the day"))
    response = await gateway.complete(ask("fake-gpt-with-fallback"), CTX)
    assert response.model == "fake-claude"
    assert response.message.content == "claude saves the day"
    assert fake_provider.count("/v1/chat/completions") == 3
    assert fake_provider.count("/v1/messages") == 1


async def test_no_fallback_for_a_request_every_model_would_reject(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    fake_provider.script(Fault("bad_request"))
    with pytest.raises(UpstreamRejected):
        await gateway.complete(ask("fake-gpt-with-fallback"), CTX)
    assert fake_provider.count() == 1


async def test_breaker_opens_sheds_without_calling_then_recovers_through_a_probe(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_attempts=1, breaker_failures=3, breaker_reset_s=0.3)
    fake_provider.script(*[Fault("server_error")] * 3)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            await gateway.complete(ask(), CTX)
    for _ in range(20):
        with pytest.raises(CircuitOpen):
            await gateway.complete(ask(), CTX)
    assert fake_provider.count() == 3  # shed calls never reached the provider
    await asyncio.sleep(0.35)
    fake_provider.script(Reply(text="back"))
    assert (await gateway.complete(ask(), CTX)).message.content == "back"  # the probe
    assert (await gateway.complete(ask(), CTX)).message.content.startswith("echo")
    assert fake_provider.count() == 5


async def test_a_failed_probe_reopens_the_breaker(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_attempts=1, breaker_failures=2, breaker_reset_s=0.2)
    fake_provider.script(*[Fault("server_error")] * 3)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await gateway.complete(ask(), CTX)
    await asyncio.sleep(0.25)
    with pytest.raises(UpstreamUnavailable):
        await gateway.complete(ask(), CTX)  # the probe fails
    with pytest.raises(CircuitOpen):
        await gateway.complete(ask(), CTX)
    assert fake_provider.count() == 3


async def test_an_open_breaker_falls_back_to_the_next_model(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_attempts=1, breaker_failures=1)
    fake_provider.script(Fault("server_error"), Reply(text="claude"))
    first = await gateway.complete(ask("fake-gpt-with-fallback"), CTX)
    assert first.model == "fake-claude"
    second = await gateway.complete(ask("fake-gpt-with-fallback"), CTX)
    assert second.model == "fake-claude"
    assert fake_provider.count("/v1/chat/completions") == 1  # the open breaker shed the second


async def test_a_hanging_provider_times_out_per_attempt(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(timeout_s=0.3, read_timeout_s=5, max_attempts=2)
    fake_provider.script(Fault("hang", hang_s=3), Fault("hang", hang_s=3))
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout):
        await gateway.complete(ask(), CTX)
    elapsed = time.perf_counter() - started
    assert 0.6 <= elapsed < 2.5  # two attempts of 0.3 s each
    # Under load the second attempt may time out before its request reaches the fake.
    assert 1 <= fake_provider.count() <= 2


async def test_concurrency_per_provider_is_bounded(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_concurrency_per_provider=2)
    fake_provider.script(*[Reply(text="slow", delay_s=0.2)] * 6)
    started = time.perf_counter()
    await asyncio.gather(*(gateway.complete(ask(), CTX) for _ in range(6)))
    # Six calls of 0.2 s through two slots take at least three rounds.
    assert time.perf_counter() - started >= 0.6


async def test_a_stream_that_fails_before_its_first_token_falls_back(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway(max_attempts=1)
    fake_provider.script(Fault("server_error"), Reply(text="streamed by claude"))
    events = [e async for e in gateway.stream(ask("fake-gpt-with-fallback"), CTX)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "streamed by claude"
    assert isinstance(events[-1], StreamEnd)
    assert sink.events[-1].model == "fake-claude"
    assert sink.events[-1].status == "ok"


async def test_a_stream_announced_but_cut_before_content_is_retried_unseen(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    # The first attempt sends its role chunk (the adapter's StreamStart), then drops: the
    # start is held below every retry layer, so the retry is invisible to the consumer.
    gateway, _ = await make_gateway(max_attempts=2)
    fake_provider.script(Fault("cut_stream", after_chunks=0), Reply(text="second try"))
    events = [e async for e in gateway.stream(ask(), CTX)]
    assert fake_provider.count() == 2
    assert [type(e) for e in events].count(StreamStart) == 1
    assert isinstance(events[0], StreamStart)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "second try"


async def test_a_stream_cut_after_tokens_is_reported_not_retried(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Fault("cut_stream", after_chunks=2))
    seen = []
    with pytest.raises(StreamInterrupted):
        async for event in gateway.stream(
            ask("fake-gpt-with-fallback", "a long answer please"), CTX
        ):
            seen.append(event)
    assert any(isinstance(e, TextDelta) for e in seen)
    assert fake_provider.count() == 1  # no second attempt, no fallback after tokens went out
    event = sink.events[-1]
    assert event.status == "interrupted"
    assert event.tokens_out > 0  # what was streamed is still metered
    assert event.estimated is True


async def test_a_cancelled_probe_does_not_keep_the_breaker_open(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_attempts=1, breaker_failures=1, breaker_reset_s=0.2)
    fake_provider.script(Fault("server_error"), Reply(text="slow", delay_s=2))
    with pytest.raises(UpstreamUnavailable):
        await gateway.complete(ask(), CTX)
    await asyncio.sleep(0.25)
    probe = asyncio.create_task(gateway.complete(ask(), CTX))
    await asyncio.sleep(0.1)
    probe.cancel()  # the caller went away in the middle of the probe
    with pytest.raises(asyncio.CancelledError):
        await probe
    fake_provider.script(Reply(text="healthy"))
    assert (await gateway.complete(ask(), CTX)).message.content == "healthy"


async def test_waiting_for_a_slot_is_not_a_provider_timeout(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(
        max_concurrency_per_provider=1, timeout_s=0.35, max_attempts=1, breaker_failures=2
    )
    fake_provider.script(*[Reply(text="ok", delay_s=0.15)] * 4)
    responses = await asyncio.gather(*(gateway.complete(ask(), CTX) for _ in range(4)))
    assert [r.message.content for r in responses] == ["ok"] * 4


async def test_a_slow_consumer_never_gets_a_silent_cancel(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    """The stream deadline bounds waits on the provider. A consumer slower than the deadline
    gets either the whole answer (it had all arrived) or ``StreamInterrupted``; never a raw
    cancellation that would end the HTTP stream without an error event."""
    gateway, _ = await make_gateway(stream_timeout_s=0.3)
    fake_provider.script(Reply(text="one two three four five six"))
    events = []
    try:
        async for event in gateway.stream(ask(), CTX):
            events.append(event)
            await asyncio.sleep(0.2)  # the consumer, not the provider, is slow
    except StreamInterrupted:
        pass
    else:
        assert isinstance(events[-1], StreamEnd)
    assert events
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_closing_a_stream_early_gives_the_connection_back(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway(max_concurrency_per_provider=1, timeout_s=1)
    fake_provider.script(
        Reply(text="a long answer that nobody reads to the end"), Reply(text="next")
    )
    stream = gateway.stream(ask(), CTX)
    async for event in stream:
        if isinstance(event, TextDelta):
            break  # the caller leaves after the first token
    await stream.aclose()
    response = await gateway.complete(ask(), CTX)
    assert response.message.content == "next"
