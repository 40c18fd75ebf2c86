"""Statements over conversations and their messages (always scoped to the owner)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mainsail.chat.models import ChatMessage, Conversation
from mainsail.core.db import utcnow
from mainsail.core.ids import uuid7

TITLE_CHARS = 200


def new_conversation(owner_id: uuid.UUID, *, title: str, filters: dict[str, Any]) -> Conversation:
    """A conversation with its id, not yet stored (``add_conversation`` stores it)."""
    short = " ".join(title.split())
    if len(short) > TITLE_CHARS:
        short = short[: TITLE_CHARS - 1] + "…"
    return Conversation(id=uuid7(), owner_id=owner_id, title=short, filters=filters)


async def add_conversation(session: AsyncSession, conversation: Conversation) -> None:
    session.add(conversation)
    await session.flush()


async def get_conversation(
    session: AsyncSession, conversation_id: uuid.UUID, owner_id: uuid.UUID
) -> Conversation | None:
    return await session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner_id == owner_id
        )
    )


async def recent_messages(
    session: AsyncSession, conversation_id: uuid.UUID, limit: int
) -> list[ChatMessage]:
    """The last ``limit`` messages, oldest first."""
    if limit <= 0:
        return []
    rows = await session.scalars(
        select(ChatMessage)
        .where(ChatMessage.conversation_id == conversation_id)
        .order_by(ChatMessage.created_at.desc(), ChatMessage.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


async def all_messages(session: AsyncSession, conversation_id: uuid.UUID) -> list[ChatMessage]:
    rows = await session.scalars(
        select(ChatMessage)
        .where(ChatMessage.conversation_id == conversation_id)
        .order_by(ChatMessage.created_at, ChatMessage.id)
    )
    return list(rows)


async def add_message(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    role: str,
    content: str,
    *,
    citations: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> ChatMessage:
    message = ChatMessage(
        conversation_id=conversation_id,
        role=role,
        content=content,
        citations=citations or [],
        usage=usage,
    )
    if created_at is not None:
        message.created_at = created_at
    session.add(message)
    await session.execute(
        update(Conversation).where(Conversation.id == conversation_id).values(updated_at=utcnow())
    )
    await session.flush()
    return message


async def list_conversations(
    session: AsyncSession, owner_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[Conversation], int]:
    total = await session.scalar(
        select(func.count()).select_from(Conversation).where(Conversation.owner_id == owner_id)
    )
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.owner_id == owner_id)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(rows), int(total or 0)


async def delete_conversation(
    session: AsyncSession, conversation_id: uuid.UUID, owner_id: uuid.UUID
) -> bool:
    result = await session.execute(
        delete(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner_id == owner_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def has_searchable_documents(connection: AsyncConnection, owner_id: uuid.UUID) -> bool:
    return bool(
        await connection.scalar(
            text(
                "SELECT EXISTS (SELECT 1 FROM documents "
                "WHERE owner_id = :owner AND active_revision IS NOT NULL)"
            ),
            {"owner": owner_id},
        )
    )
