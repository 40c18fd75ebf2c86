"""Bodies of ``/chat`` and ``/conversations``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, field_validator

from mainsail.core.schemas import OutModel, StrictModel, is_blank
from mainsail.search.schemas import Filters


class ChatIn(StrictModel):
    question: Annotated[str, Field(min_length=1, max_length=8000)]
    # Continue a conversation (its history condenses the question); omitted: a new one.
    conversation_id: uuid.UUID | None = None
    # A catalogue model; omitted: MAINSAIL_CHAT__MODEL, else the first generative model,
    # else the extractive model.
    model: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # What to search; omitted on a follow-up: the conversation's first filters.
    filters: Filters | None = None

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("the question is blank")
        if "\x00" in value:  # PostgreSQL's text cannot hold it
            raise ValueError("the question holds a NUL character (U+0000)")
        return value


class Citation(OutModel):
    marker: int  # the [n] in the answer
    chunk_id: int
    document_id: uuid.UUID
    title: str | None
    filename: str | None
    page: int | None
    page_end: int | None
    heading: list[str]
    # A sentence of the cited passage, verified to occur in the stored chunk, and its
    # offsets in the document's extracted text (null if none could be verified).
    quote: str | None
    quote_start: int | None
    quote_end: int | None


class SourceOut(OutModel):
    marker: int
    chunk_id: int
    document_id: uuid.UUID
    title: str | None
    page: int | None
    score: float


class ChatUsage(OutModel):
    input_tokens: int
    output_tokens: int
    cost_usd: str
    model_calls: int  # answered by the model (and paid for)
    cached_calls: int = 0  # answered from the response cache, free
    prompt_tokens_budgeted: int
    model: str | None = None
    # Why the answer ended: "stop", or "length" when it was cut at the answer's token limit
    # (``MAINSAIL_CHAT__ANSWER_TOKENS``); kept and cited as it is.
    finish_reason: str | None = None
    # The request whose usage events (GET /me/usage, the usage_events table) hold these calls.
    request_id: str | None = None


class ChatOut(OutModel):
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    answer: str
    citations: list[Citation]
    # Markers in the model's answer that named no supplied passage, removed from the answer.
    removed_citations: int
    model: str
    prompt_version: str
    # What was searched: the question, or a follow-up rewritten with the conversation.
    standalone_question: str
    sources: list[SourceOut]  # the passages the model was given, numbered as cited
    dropped_passages: int  # retrieved, but over the token budget
    usage: ChatUsage


class MessageOut(OutModel):
    id: uuid.UUID
    role: str
    content: str
    citations: list[dict[str, Any]]
    usage: dict[str, Any] | None
    created_at: datetime


class ConversationOut(OutModel):
    id: uuid.UUID
    title: str
    filters: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut]
