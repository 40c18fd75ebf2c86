"""An open chat socket checks the key's scopes again for every answer, as it checks the key."""

from __future__ import annotations

import asyncio
import json

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect

from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.openai_compat.conftest import LiveMainsail, live, settings  # noqa: F401 - fixtures
from tests.openai_compat.test_websocket import ASK, answer, receive, ws_url


async def test_a_key_narrowed_to_no_chat_scope_stops_chatting_on_an_open_socket(
    live: LiveMainsail,  # noqa: F811
    fake_provider: FakeProviderServer,
) -> None:
    """HTTP re-computes a key's scopes on every request (docs/security.md), and the socket
    re-authenticates before every answer; but it only checks the chat scope once, at the
    start, so a key that lost ``chat`` keeps getting answers over a socket opened before."""
    fake_provider.script(Reply(text="before"), Reply(text="after"))
    async with connect(ws_url(live), additional_headers={"X-API-Key": live.api_key}) as socket:
        assert (await receive(socket))["type"] == "ready"
        await socket.send(json.dumps({"type": "chat", "id": "before", "request": ASK}))
        assert (await answer(socket, "before"))[-1]["type"] == "done"
        engine = create_async_engine(live.settings.async_database_url())  # type: ignore[arg-type]
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE api_keys SET scopes = ARRAY['documents:read'] WHERE owner_id = :u"),
                {"u": live.user_id},
            )
        await engine.dispose()
        async with httpx.AsyncClient(base_url=live.v1) as http:  # HTTP sees the change
            for _ in range(200):
                probe = await http.get("/models", headers={"X-API-Key": live.api_key})
                if probe.status_code == 403:
                    break
                await asyncio.sleep(0.01)
            assert probe.status_code == 403, probe.text
        await socket.send(json.dumps({"type": "chat", "id": "after", "request": ASK}))
        refused = await receive(socket)
        assert refused["type"] == "error", refused
        assert refused["error"]["code"] == "insufficient_scope"
