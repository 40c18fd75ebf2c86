"""One turn of a conversation: condense a follow-up, retrieve, pack, ask, cite, keep.

``POST /chat`` stores the question together with its answer (and a new conversation with
them), in one transaction once the answer is in: a call that fails or is refused stores
nothing, so a retry (the same ``Idempotency-Key`` after a 5xx) does not leave the question
twice, nor a second conversation. A stream stores the question before the answer's model call
(its ``retrieval`` event has already named the conversation), and the answer when it ends.
Every model call goes through the gateway, so budgets, metering, retries and fallbacks apply
as everywhere else.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.chat import repository
from mainsail.chat.answering import Cited, Packed, Source, cite, pack, prompt
from mainsail.chat.models import ChatMessage, Conversation
from mainsail.chat.schemas import ChatIn
from mainsail.core.db import Database, utcnow
from mainsail.core.errors import NotFound
from mainsail.core.logging import get_logger
from mainsail.core.schemas import is_blank
from mainsail.llm.errors import StreamInterrupted
from mainsail.llm.gateway import CallContext, Gateway
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import (
    ChatRequest,
    FinishReason,
    Message,
    Passage,
    SamplingParams,
    StreamEnd,
    StreamStart,
    TextDelta,
    Usage,
)
from mainsail.search.schemas import Filters, SearchIn
from mainsail.search.service import Searcher
from mainsail.settings import ChatSettings

log = get_logger(__name__)

NO_DOCUMENTS = (
    "You have no documents to answer from yet. Upload some with POST /documents, then ask "
    "again once they are ready."
)
NOTHING_IN_SCOPE = (
    "None of your documents matched the filters of this question, so there is nothing to "
    "answer from."
)
NOTHING_FITS = (
    "Passages matching the question were found, but none fits this model's prompt budget "
    "beside the question and the conversation, so there is nothing to answer from. Ask a "
    "shorter question, start a new conversation, or use a model with a larger context."
)
# Answers the service gave itself, not the model: the model is not shown them as its own.
CANNED = frozenset({NO_DOCUMENTS, NOTHING_IN_SCOPE, NOTHING_FITS})
CONDENSED_MAX_CHARS = 1000
CONDENSED_MAX_TOKENS = 200  # what the rewritten question may take


@dataclass
class Turn:
    """What one question needs from retrieval to the model's request."""

    conversation: Conversation
    new_conversation: bool  # not stored yet: stored with the question
    question: str
    asked_at: datetime  # the question's created_at
    model: str
    extractive: bool
    standalone: str
    packed: Packed | None  # None: nothing to answer from, and no model call
    canned: str | None = None
    request: ChatRequest | None = None
    # (model, usage, served from the response cache) per call
    usage: list[tuple[str, Usage, bool]] = field(default_factory=list)
    request_id: str | None = None  # the usage events' link
    question_id: uuid.UUID | None = None  # once the question is stored


@dataclass(frozen=True, slots=True)
class Answer:
    turn: Turn
    cited: Cited
    message_id: uuid.UUID
    model: str
    usage: dict[str, Any]


class ChatService:
    def __init__(
        self, db: Database, gateway: Gateway, searcher: Searcher, settings: ChatSettings
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.searcher = searcher
        self.settings = settings

    # --- the model ------------------------------------------------------------------------

    def pick_model(self, requested: str | None) -> str:
        if requested or self.settings.model:
            name = requested or self.settings.model or ""
            self.gateway.resolve(name)  # unknown or unconfigured: the gateway's clear error
            return name
        available = self.gateway.available_models()
        for entry in available:
            if self.gateway.catalogue.provider(entry.provider).kind != "extractive":
                return entry.name
        for entry in available:
            return entry.name  # the extractive model
        return "extractive"

    def _is_extractive(self, model: str) -> bool:
        entry = self.gateway.resolve(model)
        return self.gateway.catalogue.provider(entry.provider).kind == "extractive"

    # --- a turn ---------------------------------------------------------------------------

    async def prepare(self, owner_id: uuid.UUID, body: ChatIn, ctx: CallContext) -> Turn:
        """Everything up to the answer's model call; stores nothing (``_finish`` does)."""
        asked_at = utcnow()
        model = self.pick_model(body.model)
        extractive = self._is_extractive(model)
        async with self.db.unit_of_work() as session:
            if body.conversation_id is not None:
                conversation = await repository.get_conversation(
                    session, body.conversation_id, owner_id
                )
                if conversation is None:
                    raise NotFound("No such conversation.")
                history = await repository.recent_messages(
                    session, conversation.id, self.settings.history_messages
                )
            else:
                conversation = repository.new_conversation(
                    owner_id,
                    title=body.question,
                    filters=body.filters.model_dump(mode="json", exclude_none=True)
                    if body.filters
                    else {},
                )
                history = []
        turns = self._history(history)
        turn = Turn(
            conversation,
            body.conversation_id is None,
            body.question,
            asked_at,
            model,
            extractive,
            body.question,
            None,
            request_id=ctx.request_id,
        )
        filters = body.filters or Filters.model_validate(conversation.filters or {})
        if turns:
            if not await self.searcher.holds_any(owner_id, filters):
                # Nothing to search (documents deleted since, or none the filters select): no
                # condensing call either.
                turn.canned = await self._nothing_to_answer_from(owner_id)
                return turn
            turn.standalone = await self._condense(
                model, extractive, turns, body.question, ctx, turn.usage
            )
        found = await self.searcher.search(
            owner_id,
            SearchIn(
                query=turn.standalone,
                query_syntax="plain",
                top_k=self.settings.retrieve_k,
                filters=filters,
            ),
            ctx=replace(ctx, kind="search"),
        )
        if not found.results:
            turn.canned = await self._nothing_to_answer_from(owner_id)
            return turn
        candidates = [
            Source(
                chunk_id=hit.chunk_id,
                document_id=str(hit.document_id),
                title=hit.title,
                filename=hit.filename,
                text=hit.text,
                page=hit.page,
                page_end=hit.page_end,
                heading=tuple(hit.heading),
                char_start=hit.char_start,
                char_end=hit.char_end,
                score=hit.score,
            )
            for hit in found.results
        ]
        answer_tokens, budget = self._limits(model, self.settings.answer_tokens)
        packed = pack(
            question=body.question,
            history=turns,
            candidates=candidates,
            budget=budget,
            count=count_message_tokens,
        )
        turn.packed = packed
        if not packed.sources:  # an answer would cite nothing: do not ask for one
            turn.canned = NOTHING_FITS
            return turn
        params = SamplingParams(temperature=self.settings.temperature, max_tokens=answer_tokens)
        if extractive:
            # It quotes the passages that match the question: give it the question alone.
            turn.request = ChatRequest(
                model=model,
                messages=(Message(role="user", content=turn.standalone),),
                params=params,
                context=tuple(
                    Passage(id=str(i), text=s.text, source=s.label())
                    for i, s in enumerate(packed.sources, start=1)
                ),
            )
        else:
            turn.request = ChatRequest(model=model, messages=tuple(packed.messages), params=params)
        return turn

    def _history(self, messages: list[ChatMessage]) -> list[Message]:
        """Newest first within the history budget, then back in order. A message over what
        is left is left out, not the ones before it (a long last answer must not take the
        question it answered with it). A question left out takes its answer along: an answer
        alone reads as one to whatever question is kept before it. A blank answer (an empty
        or filtered one) and the service's own fixed answers are left out, and the history
        starts with a question."""
        kept: list[tuple[Message, int]] = []
        answer_kept = False  # the message after this one (its answer) is kept
        spent = 0
        for message in reversed(messages):
            if message.role == "assistant" and (
                not (message.content or "").strip() or message.content in CANNED
            ):
                answer_kept = False
                continue
            item = Message(role=message.role, content=message.content)  # type: ignore[arg-type]
            cost = count_message_tokens([item])
            if spent + cost > self.settings.history_tokens:
                if item.role == "user" and answer_kept:
                    spent -= kept.pop()[1]
                answer_kept = False
                continue
            kept.append((item, cost))
            spent += cost
            answer_kept = item.role == "assistant"
        history = [item for item, _ in reversed(kept)]
        while history and history[0].role == "assistant":  # its question is not in the window
            history.pop(0)
        return history

    async def _condense(
        self,
        model: str,
        extractive: bool,
        turns: list[Message],
        question: str,
        ctx: CallContext,
        usage: list[tuple[str, Usage, bool]],
    ) -> str:
        earlier = [m.content or "" for m in turns if m.role == "user"]
        if extractive or not self.settings.condense:
            # No model to rewrite it: search with the previous question as context.
            return f"{earlier[-1]} {question}" if earlier else question
        condense = prompt("condense")
        answer_tokens, limit = self._limits(model, CONDENSED_MAX_TOKENS)
        # The newest turns that fit the model beside the prompt and the question: the
        # history budget is the chat's, not this model's window. They start with a question:
        # an answer whose question is cut reads as one to nothing.
        messages: tuple[Message, ...] = ()
        for first in range(len(turns)):
            if turns[first].role != "user":
                continue
            history = "\n".join(f"{m.role}: {m.content}" for m in turns[first:])
            messages = (
                Message(role="system", content=condense.system),
                Message(
                    role="user",
                    content=condense.user.substitute(history=history, question=question).strip(),
                ),
            )
            if count_message_tokens(messages) <= limit:
                break
        else:  # not even the last turn fits: search with the question as it is
            return question
        request = ChatRequest(
            model=model,
            messages=messages,
            params=SamplingParams(temperature=0.0, max_tokens=answer_tokens),
        )
        response = await self.gateway.complete(
            request, _with_prompt(ctx, condense.tag, kind="chat")
        )
        usage.append((response.model, response.usage, response.cache_hit))
        # A NUL from the model could be neither searched nor stored (PostgreSQL text).
        content = model_text(response.message.content or "")
        rewritten = content.strip()[:CONDENSED_MAX_CHARS]
        # Nothing visible (a zero-width space, a BOM): nothing to search with.
        return question if is_blank(rewritten) else rewritten

    def _limits(self, model: str, answer_tokens: int) -> tuple[int, int]:
        """(the answer's token limit, the prompt's budget) for ``model`` and every fallback the
        gateway may send the same prompt to: the smallest window of them decides."""
        entry = self.gateway.resolve(model)
        # The fallbacks the gateway can call (their provider configured), the model first.
        usable = [
            e for e in self.gateway.catalogue.chain(entry.name) if e.name in self.gateway.clients
        ]
        chain = usable or [entry]
        answer_tokens = min(answer_tokens, *(e.max_output_tokens for e in chain))
        budget = min(e.context_window for e in chain) - answer_tokens
        if self.settings.max_prompt_tokens is not None:
            budget = min(budget, self.settings.max_prompt_tokens)
        return answer_tokens, budget

    async def _nothing_to_answer_from(self, owner_id: uuid.UUID) -> str:
        """The fixed answer when a search finds nothing: none in the filters, or none at all."""
        async with self.db.autocommit() as connection:
            any_at_all = await repository.has_searchable_documents(connection, owner_id)
        return NOTHING_IN_SCOPE if any_at_all else NO_DOCUMENTS

    async def ask(self, owner_id: uuid.UUID, body: ChatIn, ctx: CallContext) -> Answer:
        turn = await self.prepare(owner_id, body, ctx)
        if turn.request is None:
            return await self._finish(turn, turn.canned or NO_DOCUMENTS, None, "stop")
        response = await self.gateway.complete(
            turn.request, _with_prompt(ctx, prompt("answer").tag, kind="chat")
        )
        turn.usage.append((response.model, response.usage, response.cache_hit))
        return await self._finish(
            turn, response.message.content or "", response.model, response.finish_reason
        )

    async def stream(
        self, owner_id: uuid.UUID, body: ChatIn, ctx: CallContext
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event, data) pairs: ``retrieval`` once, ``token`` per piece of the answer, then
        ``answer`` with the cleaned text and its citations. Markers that point at no passage
        were already sent as tokens; the final event says how many it removed."""
        turn = await self.prepare(owner_id, body, ctx)
        retrieval = {
            "conversation_id": str(turn.conversation.id),
            "standalone_question": turn.standalone,
            "sources": sources_out(turn),
        }
        if turn.request is None:
            await self._keep_question(turn)  # the first event names its conversation
            yield "retrieval", retrieval
            text = turn.canned or NO_DOCUMENTS
            yield "token", {"text": text}
            answer = await _unless_cancelled(self._finish(turn, text, None, "stop"))
            yield "answer", answer_out(answer)
            return
        pieces: list[str] = []
        held = ""  # a high surrogate ending a piece, its pair maybe starting the next
        model = turn.model
        usage: Usage | None = None
        finish_reason: FinishReason = "stop"
        cached = False
        events = self.gateway.stream(
            turn.request, _with_prompt(ctx, prompt("answer").tag, kind="chat")
        )
        try:
            # The answer's call admitted (budget, quota, rate limits) and its stream open
            # before the first event: a refusal there is the HTTP error it is (429 with
            # Retry-After, 402, 502...), not an error event after a 200.
            opening = await anext(events)
            # Stored once the answer is under way (a refusal stores nothing, so a retry does
            # not ask twice): the conversation named by the first event exists, even if the
            # stream is cut before its answer.
            await self._keep_question(turn)
            yield "retrieval", retrieval
            async for event in _chain(opening, events):
                if isinstance(event, StreamStart):
                    model, cached = event.model, event.cache_hit
                elif isinstance(event, TextDelta) and event.text:
                    piece = held + event.text
                    held = piece[-1] if "\ud800" <= piece[-1] <= "\udbff" else ""
                    piece = model_text(piece[: len(piece) - len(held)])
                    if piece:
                        pieces.append(piece)
                        yield "token", {"text": piece}
                elif isinstance(event, StreamEnd):
                    usage, finish_reason = event.usage, event.finish_reason
        finally:
            await events.aclose()
        if usage is None:  # an answer without its end is not an answer
            raise StreamInterrupted("The answer ended without finishing.")
        if held:
            pieces.append(model_text(held))
            yield "token", {"text": pieces[-1]}
        turn.usage.append((model, usage, cached))
        answer = await _unless_cancelled(self._finish(turn, "".join(pieces), model, finish_reason))
        yield "answer", answer_out(answer)

    async def _keep_question(self, turn: Turn) -> None:
        """Stores the question now (and a new conversation with it)."""
        async with self.db.unit_of_work() as session:
            await self._store_question(session, turn)
        turn.new_conversation = False

    async def _store_question(self, session: AsyncSession, turn: Turn) -> None:
        """Stores a new conversation, or locks the turn's one ``FOR KEY SHARE`` until the
        transaction ends (a delete of it waits, or went first: 404); then the question, unless
        it is stored already."""
        if turn.new_conversation:
            await repository.add_conversation(session, turn.conversation)
        else:
            conversation = await session.get(
                Conversation,
                turn.conversation.id,
                with_for_update={"read": True, "key_share": True},
            )
            if conversation is None:
                raise NotFound("The conversation was deleted while it was being answered.")
        if turn.question_id is None:
            question = await repository.add_message(
                session, turn.conversation.id, "user", turn.question, created_at=turn.asked_at
            )
            turn.question_id = question.id

    async def _finish(
        self, turn: Turn, text: str, model: str | None, finish_reason: FinishReason
    ) -> Answer:
        """Stores the question (unless it is already) and the answer in one transaction.
        ``finish_reason`` ``length``: the answer was cut at its token limit, kept as it is
        and said so in its usage."""
        sources = turn.packed.sources if turn.packed else []
        text = model_text(text)
        cited = cite(text, sources)  # no sources: every marker is removed and counted
        usage = self._usage(turn)
        usage["model"] = model
        usage["finish_reason"] = finish_reason
        async with self.db.unit_of_work() as session:
            await self._store_question(session, turn)
            message = await repository.add_message(
                session,
                turn.conversation.id,
                "assistant",
                cited.answer,
                citations=cited.citations,
                usage=usage,
            )
        turn.new_conversation = False
        if cited.removed:
            log.info("chat_citations_removed", removed=cited.removed, model=model)
        return Answer(turn, cited, message.id, model or "none", usage)

    def _usage(self, turn: Turn) -> dict[str, Any]:
        """Tokens of every call; cost and ``model_calls`` of those the model answered (one
        from the response cache was free: ``cached_calls``), as the usage events have it."""
        tokens_in = sum(u.input_tokens for _, u, _ in turn.usage)
        tokens_out = sum(u.output_tokens for _, u, _ in turn.usage)
        cost = Decimal(0)
        for model, u, cached in turn.usage:
            entry = self.gateway.catalogue.models.get(model)
            if entry is not None and not cached:
                cost += entry.cost_usd(u)
        cached_calls = sum(1 for *_, cached in turn.usage if cached)
        return {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_usd": f"{cost:.8f}",
            "model_calls": len(turn.usage) - cached_calls,
            "cached_calls": cached_calls,
            "prompt_tokens_budgeted": turn.packed.prompt_tokens if turn.packed else 0,
            "request_id": turn.request_id,
        }


_SURROGATE = re.compile("[\ud800-\udfff]")


def model_text(text: str) -> str:
    """A model's text as it can be sent and stored: no NUL (PostgreSQL's text cannot hold
    it), and a lone surrogate (some SDKs decode one from a JSON escape) as U+FFFD; a pair
    split in two code points is joined."""
    text = text.replace("\x00", "")
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


# Answers being stored after their stream's client left: kept referenced until they finish.
_STORING: set[asyncio.Task[Any]] = set()


async def _unless_cancelled(storing: Coroutine[Any, Any, Answer]) -> Answer:
    """Stores a finished answer even if the client leaves meanwhile (the stream is then
    cancelled): the model's answer is paid for, and the conversation keeps it."""
    task = asyncio.ensure_future(storing)
    _STORING.add(task)
    task.add_done_callback(_stored)
    return await asyncio.shield(task)


def _stored(task: asyncio.Task[Any]) -> None:
    """Forgets a stored answer's task; logs a failure nobody is left to read (the client
    gone, the request's task cancelled)."""
    _STORING.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("chat_answer_not_stored", error=type(error).__name__)


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


def _with_prompt(ctx: CallContext, tag: str, *, kind: str) -> CallContext:
    return replace(ctx, prompt_version=tag, kind=kind)


def sources_out(turn: Turn) -> list[dict[str, Any]]:
    if turn.packed is None:
        return []
    return [
        {
            "marker": i,
            "chunk_id": s.chunk_id,
            "document_id": s.document_id,
            "title": s.title,
            "page": s.page,
            "score": s.score,
        }
        for i, s in enumerate(turn.packed.sources, start=1)
    ]


def answer_out(answer: Answer) -> dict[str, Any]:
    turn = answer.turn
    return {
        "conversation_id": str(turn.conversation.id),
        "message_id": str(answer.message_id),
        "answer": answer.cited.answer,
        "citations": answer.cited.citations,
        "removed_citations": answer.cited.removed,
        "model": answer.model,
        "prompt_version": prompt("answer").tag,
        "standalone_question": turn.standalone,
        "sources": sources_out(turn),
        "dropped_passages": turn.packed.dropped if turn.packed else 0,
        "usage": answer.usage,
    }
