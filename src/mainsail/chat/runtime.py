"""The chat service one process shares."""

from __future__ import annotations

from mainsail.chat.service import ChatService
from mainsail.core.db import Database
from mainsail.llm.gateway import Gateway
from mainsail.search.service import Searcher
from mainsail.settings import ChatSettings


def start_chat(
    settings: ChatSettings, db: Database, gateway: Gateway, searcher: Searcher
) -> ChatService:
    return ChatService(db, gateway, searcher, settings)
