"""The gateway: every model call in the system goes through ``Gateway.complete``, ``.stream``
or ``.embed``.

It resolves the model, refuses what cannot work before any upstream call (unknown model, a
model of the wrong kind, unconfigured provider, too long for the context window, invalid tool
schemas), reserves budget, calls through the resilience stack, then settles the budget to the
real usage, writes one usage event and one log line. Quota and the usage ledger are protocols:
the database implementations live outside ``llm``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from mainsail.core.logging import get_logger, level_check
from mainsail.core.principal import Principal
from mainsail.llm.cache import CacheMode, ResponseCache
from mainsail.llm.catalogue import Catalogue, ModelEntry, ModelKind, ProviderKind
from mainsail.llm.errors import (
    InternalError,
    InvalidChatRequest,
    LLMError,
    ModelNotFound,
    ProviderNotConfigured,
    StreamInterrupted,
    UpstreamBadResponse,
    WrongModelKind,
)
from mainsail.llm.resilience import ModelClient
from mainsail.llm.tokens import count_message_tokens, count_tokens
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    Message,
    RefusalDelta,
    StreamEnd,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
)

log = get_logger("mainsail.llm")
_calls_logged = level_check("mainsail.llm", logging.INFO)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Texts per upstream embedding request, and their tokens (None: no limit), by provider kind:
# OpenAI takes 2048 inputs and 300k tokens a request; Bedrock's Titan one text per call, which
# the adapter runs concurrently, so the gateway hands it a slice at a time.
EMBED_BATCH: dict[ProviderKind, tuple[int, int | None]] = {
    "openai": (2048, 300_000),
    "bedrock": (64, None),
}
# Inputs longer than this (characters, all together) are counted off the event loop.
_COUNT_INLINE_CHARS = 100_000


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling and why; recorded with the usage."""

    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    request_id: str | None = None
    kind: str = "chat"
    role: str | None = None
    prompt_version: str | None = None  # e.g. "sentiment@1" for a shipped analysis prompt
    cache: CacheMode = "use"  # what the caller allows of the response cache

    @classmethod
    def of(
        cls,
        principal: Principal,
        *,
        request_id: str | None,
        kind: str,
        cache: CacheMode = "use",
    ) -> CallContext:
        """The context of a call made on behalf of an authenticated caller."""
        return cls(
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            request_id=request_id,
            kind=kind,
            role=principal.role.value,
            cache=cache,
        )


@dataclass(frozen=True, slots=True)
class UsageEvent:
    request_id: str | None
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    kind: str
    requested_model: str
    model: str
    provider: str
    status: str  # ok | error | interrupted | cancelled
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens_in: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0
    ttft_ms: int | None = None
    error_code: str | None = None
    fallback_used: bool = False
    cache_hit: bool = False
    prompt_version: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class UsageSink(Protocol):
    def record(self, event: UsageEvent) -> None:
        """Accept an event without blocking the caller."""


@dataclass(frozen=True, slots=True)
class Reservation:
    user_id: uuid.UUID | None
    tokens: int
    cost: Decimal
    handle: object = None


class QuotaGuard(Protocol):
    async def reserve(self, ctx: CallContext, *, tokens: int, cost: Decimal) -> Reservation:
        """Hold budget for a call's worst case, or raise if it would overspend."""

    async def settle(self, reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
        """Replace the hold with what the call really used."""


class NullUsageSink:
    def record(self, event: UsageEvent) -> None:
        return None


class NoQuota:
    async def reserve(self, ctx: CallContext, *, tokens: int, cost: Decimal) -> Reservation:
        return Reservation(user_id=ctx.user_id, tokens=tokens, cost=cost)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
        return None


class Gateway:
    def __init__(
        self,
        *,
        catalogue: Catalogue,
        clients: dict[str, ModelClient],
        unconfigured: dict[str, list[str]],
        usage: UsageSink | None = None,
        quota: QuotaGuard | None = None,
        cache: ResponseCache | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.catalogue = catalogue
        self.clients = clients
        self.unconfigured = unconfigured  # provider -> the settings that would switch it on
        self.usage = usage or NullUsageSink()
        self.quota = quota or NoQuota()
        self.cache = cache
        self.clock = clock

    # --- catalogue ------------------------------------------------------------------------

    def available_models(self, kind: str = "chat") -> list[ModelEntry]:
        return [
            self.catalogue.models[name]
            for name in self.clients
            if self.catalogue.models[name].kind == kind
        ]

    def resolve(self, name: str, kind: ModelKind = "chat") -> ModelEntry:
        entry = self.catalogue.get(name)
        if entry is None:
            raise ModelNotFound(name, sorted(m.name for m in self.available_models(kind)))
        if entry.kind != kind:
            available = sorted(m.name for m in self.available_models(kind))
            raise WrongModelKind(name, entry.kind, kind, available)
        if name not in self.clients:
            raise ProviderNotConfigured(
                name, entry.provider, self.unconfigured.get(entry.provider, [])
            )
        return entry

    # --- checks before any upstream call --------------------------------------------------

    def check(self, request: ChatRequest, entry: ModelEntry) -> tuple[ChatRequest, int]:
        """Validate; fill in ``max_tokens`` with the model's limit. Returns (request, input
        token estimate)."""
        names = [tool.name for tool in request.tools]
        if len(set(names)) != len(names):
            raise InvalidChatRequest("Tool names must be unique.", param="tools")
        choice = request.tool_choice
        if choice is not None and choice.mode == "tool" and choice.name not in names:
            raise InvalidChatRequest(
                f"tool_choice names {choice.name!r}, which is not among the tools.",
                param="tool_choice",
            )
        for tool in request.tools:
            if tool.parameters.get("type", "object") != "object":
                raise InvalidChatRequest(
                    f"The parameters of tool {tool.name!r} must be an object schema.",
                    param="tools",
                )
            if not _TOOL_NAME.fullmatch(tool.name):
                raise InvalidChatRequest(
                    f"Tool name {tool.name!r} must be 1-64 letters, digits, '_' or '-'.",
                    param="tools",
                )
            _check_schema(tool.parameters, param="tools", what=f"tool {tool.name!r}")
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema":
            if fmt.schema is None:
                raise InvalidChatRequest("json_schema needs a schema.", param="response_format")
            _check_schema(fmt.schema, param="response_format", what="response_format")
        max_tokens = request.params.max_tokens
        named = request.params.max_tokens_name
        if max_tokens is not None and max_tokens > entry.max_output_tokens:
            raise InvalidChatRequest(
                f"{named} is {max_tokens}; {entry.name} writes at most {entry.max_output_tokens}.",
                param=named,
            )
        output = max_tokens or entry.max_output_tokens
        prompt = count_message_tokens(request.messages) + sum(
            count_tokens(p.text) for p in request.context
        )
        prompt += sum(count_tokens(str(t.parameters)) + count_tokens(t.name) for t in request.tools)
        if prompt + (max_tokens or 0) > entry.context_window:
            raise InvalidChatRequest(
                f"The messages take about {prompt} tokens"
                + (f" and {named} asks for {max_tokens}" if max_tokens else "")
                + f"; {entry.name} holds {entry.context_window}.",
                param="messages",
                code="context_length_exceeded",
            )
        if max_tokens is None:
            output = min(output, max(entry.context_window - prompt, 1))
            request = replace(request, params=replace(request.params, max_tokens=output))
        return request, prompt

    def _worst_case_cost(self, entry: ModelEntry, prompt: int, output: int) -> Decimal:
        """Priced as if every input token were written to the provider's cache (the dearest
        input price), on the dearest model of the fallback chain."""
        worst = Usage(input_tokens=prompt, output_tokens=output, cache_write_tokens=prompt)
        return max(e.cost_usd(worst) for e in self.catalogue.chain(entry.name))

    @staticmethod
    def _hold(prompt: int) -> int:
        """The prompt as held against a budget: our cl100k count can undercount other
        tokenizers (Claude's, Nova's) by several percent, so hold a margin."""
        return prompt + prompt // 8 + 16

    # --- calls ----------------------------------------------------------------------------

    async def _reserve(
        self, request: ChatRequest, ctx: CallContext, entry: ModelEntry, prompt: int
    ) -> Reservation:
        """Hold the call's worst case against the caller's budget."""
        output = request.params.max_tokens or 0
        held = self._hold(prompt)
        return await self.quota.reserve(
            ctx, tokens=held + output, cost=self._worst_case_cost(entry, held, output)
        )

    def _cache_key(self, request: ChatRequest, ctx: CallContext, entry: ModelEntry) -> str | None:
        """The response-cache key of this call, or None when it must not be cached."""
        if self.cache is None or ctx.cache == "off":
            return None
        kind = self.catalogue.provider(entry.provider).kind
        if not self.cache.cacheable(request, entry, kind):
            return None
        return self.cache.key(request, entry, user=ctx.user_id, prompt_version=ctx.prompt_version)

    async def _cached(
        self, key: str | None, ctx: CallContext, entry: ModelEntry
    ) -> ChatResponse | None:
        """A stored answer, metered as a free call (``cache_hit``), or None."""
        if key is None or ctx.cache != "use" or self.cache is None:
            return None
        started = self.clock()
        response = await self.cache.get(key)
        if response is not None:
            served = self.catalogue.models.get(response.model, entry)
            self._record(
                ctx,
                entry,
                started=started,
                status="ok",
                served=served,
                usage=response.usage,
                cache_hit=True,
            )
        return response

    async def forget(self, request: ChatRequest, ctx: CallContext) -> None:
        """Drops the cached answer to ``request``, one its caller could not use (an answer
        that failed validation), so that asking again asks the model again."""
        entry = self.catalogue.get(request.model)
        if entry is None or self.cache is None:
            return
        checked, _ = self.check(request, entry)  # the request as it was keyed when answered
        key = self._cache_key(checked, ctx, entry)
        if key is not None:
            await self.cache.store.delete(key)

    async def _keep(self, key: str | None, entry: ModelEntry, response: ChatResponse) -> None:
        """Store an answer the requested model gave (a fallback's answer is not kept)."""
        if key is not None and self.cache is not None and response.model == entry.name:
            await self.cache.put(key, response)

    @asynccontextmanager
    async def _metered(
        self, ctx: CallContext, entry: ModelEntry, reservation: Reservation
    ) -> AsyncIterator[_Meter]:
        """Around one answered call: however the block ends (answer, error, cancellation),
        the reservation is settled to what the meter says was used, and one usage event and
        one log line are written. The block fills in the meter as it learns the usage."""
        meter = _Meter(started=self.clock(), served=entry)
        status, error = "ok", None
        try:
            yield meter
        except Exception as exc:
            status, error = "error", _as_llm_error(exc)
            raise
        except BaseException:  # cancelled: the caller went away
            status = "cancelled"
            raise
        finally:
            usage = meter.usage
            await self.quota.settle(
                reservation, tokens=usage.total_tokens if usage else 0, cost=meter.cost
            )
            self._record(
                ctx,
                entry,
                started=meter.started,
                status=status,
                served=meter.served,
                usage=usage,
                cost=meter.cost,
                error=error,
            )

    async def complete(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        entry = self.resolve(request.model)
        request, prompt = self.check(request, entry)
        key = self._cache_key(request, ctx, entry)
        cached = await self._cached(key, ctx, entry)
        if cached is not None:
            return cached
        reservation = await self._reserve(request, ctx, entry, prompt)
        async with self._metered(ctx, entry, reservation) as meter:
            response = await self.clients[entry.name].complete(request)
            usage = response.usage
            if usage.estimated:
                usage = _estimate(prompt, _written(response.message), usage)
                response = replace(response, usage=usage)
            meter.served = self.catalogue.models[response.model]
            meter.usage, meter.cost = usage, meter.served.cost_usd(usage)
        await self._keep(key, entry, response)
        return response

    # --- embeddings -----------------------------------------------------------------------

    def check_embedding(self, request: EmbeddingRequest, entry: ModelEntry) -> list[int]:
        """Validate; the token count of each input (cl100k: exact for OpenAI's embedding
        models, an estimate for others, as for chat prompts)."""
        if not request.inputs:
            raise InvalidChatRequest("input must hold at least one text.", param="input")
        if not all(request.inputs):
            raise InvalidChatRequest("input must not hold empty strings.", param="input")
        dimensions = request.dimensions
        if dimensions is not None and (
            dimensions < 1 or (entry.dimension is not None and dimensions > entry.dimension)
        ):
            raise InvalidChatRequest(
                f"dimensions must be between 1 and {entry.dimension or 'the model size'} for "
                f"{entry.name}.",
                param="dimensions",
            )
        counts = [count_tokens(text) for text in request.inputs]
        for index, tokens in enumerate(counts):
            if tokens > entry.context_window:
                raise InvalidChatRequest(
                    f"input[{index}] takes about {tokens} tokens; {entry.name} reads at most "
                    f"{entry.context_window}.",
                    param="input",
                    code="context_length_exceeded",
                )
        return counts

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        """Vectors for ``request.inputs``, in order: the same path as ``complete`` (budget
        held for the input tokens at the model's input price, then settled; retries, breaker,
        concurrency bound and deadline per upstream request; one usage event for the call).
        Inputs beyond one upstream request's limits go in several, one after the other."""
        entry = self.resolve(request.model, kind="embedding")
        if sum(map(len, request.inputs)) > _COUNT_INLINE_CHARS:
            counts = await asyncio.to_thread(self.check_embedding, request, entry)
        else:
            counts = self.check_embedding(request, entry)
        held = self._hold(sum(counts))
        reservation = await self.quota.reserve(
            ctx, tokens=held, cost=self._worst_case_cost(entry, held, 0)
        )
        client = self.clients[entry.name]
        vectors: list[np.ndarray] = []
        async with self._metered(ctx, entry, reservation) as meter:
            for start, stop in self._embed_batches(entry, counts):
                batch = replace(request, inputs=request.inputs[start:stop])
                response = await client.embed(batch)
                usage = response.usage
                if usage.estimated or not usage.input_tokens:
                    usage = Usage(input_tokens=sum(counts[start:stop]), estimated=True)
                # A later batch may fail: what the earlier ones used is still paid for.
                meter.usage = _add(meter.usage, usage)
                meter.cost = entry.cost_usd(meter.usage)
                got = response.vectors
                width = vectors[0].shape[1] if vectors else None
                if (
                    got.ndim != 2
                    or len(got) != stop - start
                    or (width is not None and got.shape[1] != width)
                    or not np.isfinite(got).all()
                ):
                    raise UpstreamBadResponse(
                        f"The provider's vectors were not {stop - start} rows of one length"
                        " and finite values.",
                        provider=entry.provider,
                        model=entry.name,
                    )
                vectors.append(got)
        return EmbeddingResponse(
            model=entry.name,
            provider=entry.provider,
            vectors=vectors[0] if len(vectors) == 1 else np.concatenate(vectors),
            usage=meter.usage or Usage(),
        )

    def _embed_batches(self, entry: ModelEntry, counts: Sequence[int]) -> list[tuple[int, int]]:
        """Slices of the inputs, each within the provider's per-request limits."""
        kind = self.catalogue.provider(entry.provider).kind
        max_inputs, max_tokens = EMBED_BATCH.get(kind, (2048, None))
        batches: list[tuple[int, int]] = []
        start, tokens = 0, 0
        for index, count in enumerate(counts):
            full = index - start >= max_inputs
            if full or (max_tokens is not None and index > start and tokens + count > max_tokens):
                batches.append((start, index))
                start, tokens = index, 0
            tokens += count
        batches.append((start, len(counts)))
        return batches

    async def stream(self, request: ChatRequest, ctx: CallContext) -> EventStream:
        """Events of one answer. Failures before the first event raise (and fall back);
        later ones raise ``StreamInterrupted`` after what was already sent. A cached answer
        is replayed as one text delta."""
        entry = self.resolve(request.model)
        request, prompt = self.check(request, entry)
        key = self._cache_key(request, ctx, entry)
        cached = await self._cached(key, ctx, entry)
        if cached is not None:
            yield StreamStart(cached.id, cached.model, cached.provider, cache_hit=True)
            if cached.message.content:
                yield TextDelta(cached.message.content)
            yield StreamEnd(cached.finish_reason, cached.usage)
            return
        reservation = await self._reserve(request, ctx, entry, prompt)
        started = self.clock()
        start: StreamStart | None = None
        finish: StreamEnd | None = None
        first_token: float | None = None
        served = entry
        written: list[str] = []
        refused: list[str] = []  # a refusal is paid for, but no answer to keep
        tool_calls = False
        usage: Usage | None = None
        status: str = "cancelled"
        error: LLMError | None = None
        try:
            async for event in self.clients[entry.name].stream(request):
                if isinstance(event, StreamStart):
                    start = event
                    served = self.catalogue.models.get(event.model, entry)
                elif isinstance(event, TextDelta | ToolCallDelta | RefusalDelta):
                    if first_token is None:
                        first_token = self.clock()
                    tool_calls = tool_calls or isinstance(event, ToolCallDelta)
                    if isinstance(event, RefusalDelta):
                        refused.append(event.text)
                    else:
                        written.append(
                            event.text if isinstance(event, TextDelta) else event.arguments
                        )
                elif isinstance(event, StreamEnd):
                    usage = event.usage
                    if usage.estimated:
                        usage = _estimate(prompt, "".join(written + refused), usage)
                        event = replace(event, usage=usage)
                    status, finish = "ok", event
                yield event
        except StreamInterrupted as exc:
            status, error = "interrupted", exc
            raise
        except Exception as exc:
            if first_token is None:
                status, error = "error", _as_llm_error(exc)
                raise
            # Tokens already went out: whatever broke, the caller must learn the answer is cut.
            status = "interrupted"
            cause = _as_llm_error(exc)
            error = StreamInterrupted(
                f"The answer broke off after it had started ({cause.code}).",
                provider=cause.provider,
                model=cause.model,
            )
            raise error from exc
        finally:
            if usage is None and first_token is not None:
                # Cut short (by the provider or the caller): the tokens sent were still paid for.
                usage = _estimate(prompt, "".join(written + refused), Usage(estimated=True))
            cost = served.cost_usd(usage) if usage else Decimal(0)
            await self.quota.settle(
                reservation, tokens=usage.total_tokens if usage else 0, cost=cost
            )
            ttft = None if first_token is None else int((first_token - started) * 1000)
            self._record(
                ctx,
                entry,
                started=started,
                status=status,
                served=served,
                usage=usage,
                cost=cost,
                error=error,
                ttft_ms=ttft,
            )
        # An empty answer is not kept: a refusal streamed as ``delta.refusal`` leaves one.
        if (
            key is not None
            and start is not None
            and finish is not None
            and not tool_calls
            and not refused
            and any(written)
        ):
            answer = ChatResponse(
                id=start.id,
                model=start.model,
                provider=start.provider,
                message=Message(role="assistant", content="".join(written)),
                finish_reason=finish.finish_reason,
                usage=finish.usage,
            )
            await self._keep(key, entry, answer)

    def _record(
        self,
        ctx: CallContext,
        entry: ModelEntry,
        *,
        started: float,
        status: str,
        served: ModelEntry | None = None,
        usage: Usage | None = None,
        cost: Decimal = Decimal(0),
        error: LLMError | None = None,
        ttft_ms: int | None = None,
        cache_hit: bool = False,
    ) -> None:
        served = served or entry
        usage = usage or Usage()
        latency_ms = int((self.clock() - started) * 1000)
        event = UsageEvent(
            request_id=ctx.request_id,
            user_id=ctx.user_id,
            api_key_id=ctx.api_key_id,
            kind=ctx.kind,
            requested_model=entry.name,
            model=served.name,
            provider=served.provider,
            status=status,
            tokens_in=usage.input_tokens,
            tokens_out=usage.output_tokens,
            cached_tokens_in=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            estimated=usage.estimated,
            cost_usd=cost,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            error_code=error.code if error else None,
            fallback_used=served.name != entry.name,
            cache_hit=cache_hit,
            prompt_version=ctx.prompt_version,
        )
        self.usage.record(event)
        if not _calls_logged():  # the line would be built only to be dropped
            return
        log.info(
            "llm_call",
            request_id=ctx.request_id,
            user_id=str(ctx.user_id) if ctx.user_id else None,
            model=served.name,
            requested_model=entry.name,
            provider=served.provider,
            status=status,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            tokens_in=usage.input_tokens,
            tokens_out=usage.output_tokens,
            estimated_cost=float(cost),
            error=error.code if error else None,
            cache_hit=cache_hit,
        )


@dataclass(slots=True)
class _Meter:
    """What a call used, as far as it got (see ``Gateway._metered``)."""

    started: float
    served: ModelEntry
    usage: Usage | None = None
    cost: Decimal = Decimal(0)


def _add(total: Usage | None, more: Usage) -> Usage:
    if total is None:
        return more
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cached_input_tokens=total.cached_input_tokens + more.cached_input_tokens,
        cache_write_tokens=total.cache_write_tokens + more.cache_write_tokens,
        estimated=total.estimated or more.estimated,
    )


def _as_llm_error(exc: Exception) -> LLMError:
    """Our error for the ledger: LLM errors as they are, anything else as an internal one."""
    if isinstance(exc, LLMError):
        return exc
    return InternalError(f"Unexpected {type(exc).__name__}.")


def _estimate(prompt: int, text: str, reported: Usage) -> Usage:
    return Usage(
        input_tokens=reported.input_tokens or prompt,
        output_tokens=reported.output_tokens or count_tokens(text),
        estimated=True,
    )


def _written(message: Message) -> str:
    """What the model wrote, for an estimate: its text and each tool call's name and
    arguments (an answer that is only a tool call is still paid for)."""
    calls = "".join(call.name + call.arguments for call in message.tool_calls)
    return (message.content or "") + calls


def _check_schema(schema: object, *, param: str, what: str) -> None:
    if not isinstance(schema, dict):
        raise InvalidChatRequest(f"The schema of {what} must be a JSON object.", param=param)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidChatRequest(
            f"The schema of {what} is not valid JSON Schema: {exc.message}", param=param
        ) from None
