from __future__ import annotations

import json
from typing import Any

import httpx

from mainsail.chat.answering import Source
from tests.search.conftest import ingest, search_settings, settings  # noqa: F401 - fixtures


def sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in body.strip().split("\n\n"):
        name, data = "message", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data += line.removeprefix("data: ")
        events.append((name, json.loads(data) if data else {}))
    return events


async def ask(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/chat", json=body, headers=headers)


def passage(
    text: str,
    *,
    chunk_id: int = 1,
    document_id: str | None = None,
    title: str | None = None,
    filename: str = "doc.md",
    char_start: int = 0,
) -> Source:
    """A retrieved passage for ``cite``: ``text`` at ``char_start`` of its document."""
    return Source(
        chunk_id=chunk_id,
        document_id=document_id or f"00000000-0000-0000-0000-{chunk_id:012d}",
        title=title,
        filename=filename,
        text=text,
        page=None,
        page_end=None,
        heading=(),
        char_start=char_start,
        char_end=char_start + len(text),
        score=1.0,
    )
