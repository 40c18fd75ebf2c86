from __future__ import annotations

import json
from typing import Any

import httpx

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
