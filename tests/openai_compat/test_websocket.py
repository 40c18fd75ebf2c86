"""/v1/ws/chat: the same answer events as SSE, over a WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.openai_compat.conftest import LiveMainsail


def ws_url(live: LiveMainsail) -> str:
    return live.base_url.replace("http://", "ws://") + "/v1/ws/chat"


async def receive(socket: ClientConnection) -> dict[str, Any]:
    return json.loads(await socket.recv(decode=True))  # type: ignore[no-any-return]


async def answer(socket: ClientConnection, ident: str) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await receive(socket)
        assert message.get("id") == ident
        messages.append(message)
        if message["type"] in ("done", "error"):
            return messages


ASK = {
    "model": "fake-gpt",
    "messages": [{"role": "user", "content": "hi"}],
    "stream_options": {"include_usage": True},
}


async def test_streams_chunks_after_first_message_auth(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="over the socket", input_tokens=5, output_tokens=3))
    async with connect(ws_url(live)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": live.api_key}))
        assert (await receive(socket))["type"] == "ready"
        await socket.send(json.dumps({"type": "chat", "id": "q1", "request": ASK}))
        messages = await answer(socket, "q1")
    chunks = [m["data"] for m in messages if m["type"] == "chunk"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "over the socket"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert messages[-1]["type"] == "done"


async def test_header_auth_and_several_questions_on_one_socket(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Reply(text="first"), Reply(text="second"))
    async with connect(ws_url(live), additional_headers={"X-API-Key": live.api_key}) as socket:
        assert (await receive(socket))["type"] == "ready"
        for ident, expected in (("a", "first"), ("b", "second")):
            await socket.send(json.dumps({"type": "chat", "id": ident, "request": ASK}))
            messages = await answer(socket, ident)
            text = "".join(
                m["data"]["choices"][0]["delta"].get("content") or ""
                for m in messages
                if m["type"] == "chunk" and m["data"]["choices"]
            )
            assert text == expected


async def test_bad_credentials_close_the_socket(live: LiveMainsail) -> None:
    async with connect(ws_url(live)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": "msk_000000000000_nope"}))
        message = await receive(socket)
        assert message["type"] == "error"
        assert message["error"]["type"] == "authentication_error"
        await socket.wait_closed()
    assert socket.close_code == 1008


async def test_bad_requests_and_upstream_failures_are_error_messages_not_hangs(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(*[Fault("server_error")] * 3)
    async with connect(ws_url(live), additional_headers={"X-API-Key": live.api_key}) as socket:
        await receive(socket)
        await socket.send(json.dumps({"type": "chat", "id": "bad", "request": {"model": "x"}}))
        (invalid,) = await answer(socket, "bad")
        assert invalid["error"]["code"] == "invalid_request"
        await socket.send(json.dumps({"type": "chat", "id": "up", "request": ASK}))
        (failed,) = await answer(socket, "up")
        assert failed["error"]["code"] == "upstream_unavailable"
        await socket.send(
            json.dumps({"type": "chat", "id": "nm", "request": {**ASK, "model": "nope"}})
        )
        (unknown,) = await answer(socket, "nm")
        assert unknown["error"]["code"] == "model_not_found"


async def test_a_revoked_key_stops_working_on_an_open_socket(
    live: LiveMainsail, fake_provider: FakeProviderServer
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async with connect(ws_url(live), additional_headers={"X-API-Key": live.api_key}) as socket:
        assert (await receive(socket))["type"] == "ready"
        await socket.send(json.dumps({"type": "chat", "id": "before", "request": ASK}))
        assert (await answer(socket, "before"))[-1]["type"] == "done"
        engine = create_async_engine(live.settings.async_database_url())  # type: ignore[arg-type]
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE api_keys SET revoked_at = now()"))
        await engine.dispose()
        # Changed behind the server's back: its cached key goes when the notification arrives.
        async with httpx.AsyncClient(base_url=live.v1) as http:
            for _ in range(200):
                probe = await http.get("/models", headers={"X-API-Key": live.api_key})
                if probe.status_code == 401:
                    break
                await asyncio.sleep(0.01)
        await socket.send(json.dumps({"type": "chat", "id": "after", "request": ASK}))
        refused = await receive(socket)
        assert refused["type"] == "error"
        assert "revoked" in refused["error"]["message"]
        await socket.wait_closed()
    assert socket.close_code == 1008
