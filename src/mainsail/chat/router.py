"""``POST /chat`` (JSON or SSE) and the caller's conversations."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from mainsail.chat import repository
from mainsail.chat.schemas import (
    ChatIn,
    ChatOut,
    ConversationDetail,
    ConversationOut,
    MessageOut,
)
from mainsail.chat.service import ChatService, answer_out
from mainsail.core import fastjson
from mainsail.core.deps import JsonBody, SessionDep
from mainsail.core.errors import AppError, NotFound
from mainsail.core.logging import get_logger
from mainsail.core.pagination import Page, PageParams
from mainsail.core.principal import Principal, Scope
from mainsail.core.sse import EventStreamResponse
from mainsail.identity.deps import CurrentPrincipal, require_scope
from mainsail.llm.cache import cache_mode
from mainsail.llm.errors import LLMError
from mainsail.llm.gateway import CallContext
from mainsail.openai_compat.errors import llm_error_status

log = get_logger(__name__)
router = APIRouter(tags=["chat"], dependencies=[require_scope(Scope.CHAT)])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "conversation_id names no conversation of yours"},
    422: {"description": "Empty or over-long question, bad filters"},
    429: {"description": "quota_exceeded: over your token or cost budget"},
    503: {"description": "The model is unavailable"},
}


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


def _context(request: Request, principal: Principal) -> CallContext:
    return CallContext.of(
        principal,
        request_id=getattr(request.state, "request_id", None),
        kind="chat",
        cache=cache_mode(request.headers.get("cache-control")),
    )


@router.post(
    "/chat",
    summary="Ask your documents: an answer with verified citations",
    dependencies=[JsonBody],
    responses=ERRORS,
)
async def chat(body: ChatIn, request: Request, principal: CurrentPrincipal) -> ChatOut:
    service = _service(request)
    answer = await service.ask(principal.user_id, body, _context(request, principal))
    return ChatOut.model_validate(answer_out(answer))


@router.post(
    "/chat/stream",
    summary="Ask your documents, streamed over SSE: retrieval, tokens, then the cited answer",
    dependencies=[JsonBody],
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def chat_stream(
    body: ChatIn, request: Request, principal: CurrentPrincipal
) -> EventStreamResponse:
    service = _service(request)
    events = aiter(service.stream(principal.user_id, body, _context(request, principal)))
    # Retrieval, and the opening of the answer's model call, happen before the first event:
    # a failure there (an unknown conversation, a quota refusal, the provider down) is an
    # ordinary HTTP error, not a stream.
    first = await anext(events)
    return EventStreamResponse(_sse(first, events), on_close=events.aclose)  # type: ignore[attr-defined]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + fastjson.dumps(data) + b"\n\n"


async def _sse(
    first: tuple[str, dict[str, Any]], events: AsyncIterator[tuple[str, dict[str, Any]]]
) -> AsyncIterator[bytes]:
    """Ends with ``done``, or with an ``error`` event: never a silent cut."""
    try:
        yield _event(*first)
        async for name, data in events:
            if name == "answer":
                data = ChatOut.model_validate(data).model_dump(mode="json")
            yield _event(name, data)
        yield _event("done", {})
    except Exception as exc:
        yield _event("error", _stream_error(exc))
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _stream_error(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, LLMError):
        log.warning("chat_stream_failed", code=exc.code)
        return {"code": exc.code, "status": llm_error_status(exc), "detail": exc.message}
    if isinstance(exc, AppError):
        return {"code": exc.code, "status": exc.status, "detail": exc.detail}
    log.error("chat_stream_crashed", exc_info=exc)
    return {
        "code": "internal_error",
        "status": 500,
        "detail": "The answer failed unexpectedly; the request id identifies it.",
    }


@router.get("/conversations", summary="Your conversations, most recent first")
async def list_conversations(
    principal: CurrentPrincipal, session: SessionDep, page: Annotated[PageParams, Query()]
) -> Page[ConversationOut]:
    rows, total = await repository.list_conversations(
        session, principal.user_id, limit=page.limit, offset=page.offset
    )
    return Page(
        items=[ConversationOut.model_validate(row) for row in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/conversations/{conversation_id}", summary="A conversation with its messages")
async def read_conversation(
    conversation_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ConversationDetail:
    conversation = await repository.get_conversation(session, conversation_id, principal.user_id)
    if conversation is None:
        raise NotFound("No such conversation.")
    messages = await repository.all_messages(session, conversation.id)
    return ConversationDetail(
        **ConversationOut.model_validate(conversation).model_dump(),
        messages=[MessageOut.model_validate(m) for m in messages],
    )


@router.delete(
    "/conversations/{conversation_id}",
    summary="Delete a conversation and its messages",
    status_code=status.HTTP_204_NO_CONTENT,
)
async def delete_conversation(
    conversation_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> Response:
    if not await repository.delete_conversation(session, conversation_id, principal.user_id):
        raise NotFound("No such conversation.")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
