"""Resilience as wrappers around a model client, stacked by the gateway:

    Fallback([Retrying(Breaker(Bounded(Deadline(ProviderModel(adapter, entry))))), ...])

Each wrapper does one thing and has the same interface as what it wraps. Streams are retried
and fall back only before their first event; once a token has gone out, a failure is reported
as ``StreamInterrupted``, never hidden by a silent second attempt. ``complete`` and ``embed``
are both one awaited answer, and share each wrapper's ``_call``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    CircuitOpen,
    LLMError,
    StreamInterrupted,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from mainsail.llm.providers.base import ProviderAdapter
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    StreamStart,
)

_Request = TypeVar("_Request", ChatRequest, EmbeddingRequest)
_Answer = TypeVar("_Answer", ChatResponse, EmbeddingResponse)


async def held_start(events: EventStream) -> EventStream:
    """Passes events through, holding ``StreamStart`` back until the first content event.

    Some providers announce a stream before they have answered anything; until content
    arrives the stream has not really started, and may still be retried or fall back.
    """
    pending: StreamStart | None = None
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, StreamStart):
                pending = event
                continue
            if pending is not None:
                yield pending
                pending = None
            yield event


def _held(client: ModelClient, request: ChatRequest) -> EventStream:
    """``client``'s stream with its start held, wrapped in ``held_start`` only if it is not
    held already: each wrapper here holds its inner stream's start (``holds_start``), and
    ``Bounded`` passes a stream through as it came. Every event passes through each layer
    as one more generator step, so a redundant hold costs on every token."""
    events = client.stream(request)
    return events if getattr(client, "holds_start", False) else held_start(events)


class ModelClient(Protocol):
    entry: ModelEntry

    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> EventStream: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse: ...


class ProviderModel:
    """One catalogue entry served by one adapter."""

    def __init__(self, adapter: ProviderAdapter, entry: ModelEntry) -> None:
        self.adapter = adapter
        self.entry = entry

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self.adapter.complete(request, self.entry)

    def stream(self, request: ChatRequest) -> EventStream:
        return self.adapter.stream(request, self.entry)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self.adapter.embed(request, self.entry)


class Bounded:
    """At most N calls in flight per provider (the semaphore is shared by its models), so a
    burst queues here instead of opening thousands of sockets upstream."""

    def __init__(self, inner: ModelClient, slots: asyncio.Semaphore) -> None:
        self.inner, self.entry, self.slots = inner, inner.entry, slots
        self.holds_start: bool = getattr(inner, "holds_start", False)  # passed through

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._call(self.inner.complete, request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self._call(self.inner.embed, request)

    async def _call(
        self, call: Callable[[_Request], Awaitable[_Answer]], request: _Request
    ) -> _Answer:
        async with self.slots:
            return await call(request)

    async def stream(self, request: ChatRequest) -> EventStream:
        async with self.slots, contextlib.aclosing(self.inner.stream(request)) as events:
            async for event in events:
                yield event


class Deadline:
    """A total time limit per attempt (connect and read limits are set in the SDK client).

    For a stream the limit bounds the wait for its first event; the whole stream gets
    ``stream_total_s``.
    """

    holds_start = True  # its stream's start is held (see ``_held``)

    def __init__(self, inner: ModelClient, *, total_s: float, stream_total_s: float) -> None:
        self.inner, self.entry = inner, inner.entry
        self.total_s, self.stream_total_s = total_s, stream_total_s

    def _timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"No answer within {self.total_s:g}s.",
            provider=self.entry.provider,
            model=self.entry.name,
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._call(self.inner.complete, request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self._call(self.inner.embed, request)

    async def _call(
        self, call: Callable[[_Request], Awaitable[_Answer]], request: _Request
    ) -> _Answer:
        try:
            async with asyncio.timeout(self.total_s):
                return await call(request)
        except TimeoutError:
            raise self._timeout() from None

    async def stream(self, request: ChatRequest) -> EventStream:
        loop = asyncio.get_running_loop()
        first_by = loop.time() + self.total_s
        all_by = loop.time() + self.stream_total_s
        started = False
        async with contextlib.aclosing(_held(self.inner, request)) as events:
            while True:
                # Each wait has its own deadline and nothing is yielded inside one: a timer
                # must never fire while the consumer, not the provider, is the slow one.
                try:
                    async with asyncio.timeout_at(all_by if started else first_by):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if not started:
                        raise self._timeout() from None
                    raise StreamInterrupted(
                        f"The stream ran past {self.stream_total_s:g}s.",
                        provider=self.entry.provider,
                        model=self.entry.name,
                    ) from None
                started = True
                yield event


class Breaker:
    """A circuit breaker per provider and model.

    Closed: calls pass; ``failure_threshold`` consecutive provider failures open it. Open:
    calls fail at once with ``CircuitOpen`` (no await, no I/O). After ``reset_after_s`` it is
    half-open: one probe call passes; its success closes the circuit, its failure reopens it.
    Only failures that say something about the provider count (timeouts, 5xx, rate limits,
    unreadable answers), never a rejected request.
    """

    holds_start = True  # its stream's start is held (see ``_held``)

    def __init__(
        self,
        inner: ModelClient,
        *,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner, self.entry = inner, inner.entry
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    def _admit(self) -> bool:
        """Let the call through, or raise; True when the call is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        raise CircuitOpen(
            f"{self.entry.name} is failing; calls are paused for a while.",
            provider=self.entry.provider,
            model=self.entry.name,
        )

    def _succeeded(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def _failed(self, exc: LLMError, probe: bool) -> None:
        if probe:
            self.probing = False
        if not exc.retryable:
            if probe:  # the provider answered: it is alive
                self._succeeded()
            return
        self.failures += 1
        if probe or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._call(self.inner.complete, request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self._call(self.inner.embed, request)

    async def _call(
        self, call: Callable[[_Request], Awaitable[_Answer]], request: _Request
    ) -> _Answer:
        probe = self._admit()
        try:
            response = await call(request)
        except LLMError as exc:
            self._failed(exc, probe)
            raise
        except BaseException:
            if probe:  # a cancelled probe proves nothing: let the next call probe
                self.probing = False
            raise
        self._succeeded()
        return response

    async def stream(self, request: ChatRequest) -> EventStream:
        probe = self._admit()
        alive = False
        try:
            async with contextlib.aclosing(_held(self.inner, request)) as events:
                async for event in events:
                    if not alive:
                        alive = True
                        self._succeeded()
                    yield event
        except LLMError as exc:
            self._failed(exc, probe and not alive)
            raise
        finally:
            if probe and not alive:
                self.probing = False


Sleep = Callable[[float], Awaitable[None]]


class Retrying:
    """Retries retryable failures with exponential backoff and full jitter.

    A 429's ``Retry-After`` is honoured when it is at most ``max_retry_after_s``; a longer one
    is not waited for (the caller's fallback is better than a long silence).
    """

    holds_start = True  # its stream's start is held (see ``_held``)

    def __init__(
        self,
        inner: ModelClient,
        *,
        attempts: int,
        base_delay_s: float,
        max_delay_s: float,
        max_retry_after_s: float,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.inner, self.entry = inner, inner.entry
        self.attempts = attempts
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.max_retry_after_s = max_retry_after_s
        self.sleep, self.jitter = sleep, jitter

    def _delay(self, exc: LLMError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if not exc.retryable or attempt + 1 >= self.attempts:
            return None
        if isinstance(exc, UpstreamRateLimited) and exc.retry_after is not None:
            wait = float(exc.retry_after)
            return wait if wait <= self.max_retry_after_s else None
        return min(self.max_delay_s, self.base_delay_s * 2.0**attempt) * self.jitter()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._call(self.inner.complete, request)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        return await self._call(self.inner.embed, request)

    async def _call(
        self, call: Callable[[_Request], Awaitable[_Answer]], request: _Request
    ) -> _Answer:
        attempt = 0
        while True:
            try:
                return await call(request)
            except LLMError as exc:
                delay = self._delay(exc, attempt)
                if delay is None:
                    raise
            await self.sleep(delay)
            attempt += 1

    async def stream(self, request: ChatRequest) -> EventStream:
        attempt = 0
        while True:
            started = False
            try:
                async with contextlib.aclosing(_held(self.inner, request)) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except LLMError as exc:
                delay = None if started else self._delay(exc, attempt)
                if delay is None:
                    raise
            await self.sleep(delay)
            attempt += 1


class Fallback:
    """Tries the model, then each fallback, on failures another model may not share."""

    holds_start = True  # its stream's start is held (see ``_held``)

    def __init__(self, chain: list[ModelClient]) -> None:
        if not chain:
            raise ValueError("a fallback chain needs at least one model")
        self.chain = chain
        self.entry = chain[0].entry

    async def complete(self, request: ChatRequest) -> ChatResponse:
        last: LLMError | None = None
        for client in self.chain:
            try:
                return await client.complete(request)
            except LLMError as exc:
                if not exc.falls_back:
                    raise
                last = exc
        if last is None:  # pragma: no cover - the chain is never empty
            raise RuntimeError("empty fallback chain")
        raise last

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        # Never another model: its vectors would live in another space (and the catalogue
        # refuses fallbacks on embedding models).
        return await self.chain[0].embed(request)

    async def stream(self, request: ChatRequest) -> EventStream:
        last: LLMError | None = None
        for client in self.chain:
            started = False
            try:
                async with contextlib.aclosing(_held(client, request)) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except StreamInterrupted:
                raise
            except LLMError as exc:
                if started:
                    raise StreamInterrupted(
                        "The stream broke off after it had started.",
                        provider=exc.provider,
                        model=exc.model,
                    ) from exc
                if not exc.falls_back:
                    raise
                last = exc
        if last is None:  # pragma: no cover - the chain is never empty
            raise RuntimeError("empty fallback chain")
        raise last
