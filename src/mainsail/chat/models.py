"""Conversations and their messages; an assistant message keeps its citations and usage."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from mainsail.core.db import Base, IdMixin, TimestampMixin
from mainsail.core.ownership import OwnedMixin


class Conversation(IdMixin, OwnedMixin, TimestampMixin, Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_updated_at", "owner_id", "updated_at"),)

    title: Mapped[str] = mapped_column(String(200))  # the first question, shortened
    # Filters the conversation searches with (collections, documents, ...), from its first turn.
    filters: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class ChatMessage(IdMixin, TimestampMixin, Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        Index("ix_chat_messages_conversation_id_created_at", "conversation_id", "created_at"),
    )

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # Assistant messages: [{"marker", "chunk_id", "document_id", "quote", ...}].
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    # Assistant messages: model, tokens, cost, and the request id that links the usage event.
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
