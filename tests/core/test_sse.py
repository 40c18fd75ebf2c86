"""EventStreamResponse at the ASGI level: a whole stream, a client that leaves, a shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mainsail.core.sse import EventStreamResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class Client:
    """The server side of one connection as an ASGI app sees it: ``receive`` answers
    ``http.disconnect`` once the client has left or the response is complete."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.gone.set()

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Source:
    """Events with a pause before each after the first; records how it ended."""

    def __init__(self, count: int, pause_s: float) -> None:
        self.count, self.pause_s = count, pause_s
        self.ended: str | None = None
        self.produced = 0
        self.first_out = asyncio.Event()

    async def events(self) -> AsyncIterator[bytes]:
        try:
            for n in range(self.count):
                if n:
                    await asyncio.sleep(self.pause_s)
                self.produced += 1
                self.first_out.set()
                yield f"data: {n}\n\n".encode()
            self.ended = "complete"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            await asyncio.sleep(0)  # cleanup may await: the task is not cancelled again
            self.ended = "cancelled, cleaned up"
            raise
        finally:
            if self.ended is None:
                self.ended = "closed"


async def test_a_whole_stream_is_sent_with_its_headers_and_end() -> None:
    client, source = Client(), Source(3, 0.0)
    response = EventStreamResponse(source.events(), headers={"Mainsail-Cache": "hit"})
    await response(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"mainsail-cache"] == b"hit"
    assert client.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert source.ended == "complete"


async def started(client: Client, source: Source) -> asyncio.Task[None]:
    """The response running in a task of its own, its first event produced."""
    response = EventStreamResponse(source.events())
    running = asyncio.create_task(response(SCOPE, client.receive, client.send))
    await source.first_out.wait()
    return running


async def test_a_client_that_leaves_stops_the_source_at_once() -> None:
    client, source = Client(), Source(5, 10.0)
    running = await started(client, source)
    client.gone.set()  # the client leaves while the source waits for its next event
    await asyncio.wait_for(running, timeout=2)  # ends normally, well before the pause
    assert source.ended == "cancelled, cleaned up"
    assert source.produced == 1
    assert not running.cancelled()
    assert running.cancelling() == 0  # the cancel it used was taken back


async def test_a_cancellation_that_is_not_the_client_leaving_propagates() -> None:
    client, source = Client(), Source(5, 10.0)
    running = await started(client, source)
    running.cancel()  # a server shutting down
    with pytest.raises(asyncio.CancelledError):
        await running
    assert source.ended == "cancelled, cleaned up"


async def test_on_close_runs_even_when_the_events_never_started() -> None:
    """The client is gone before the first event (sending the status fails): the events'
    own ``finally`` never runs, so what they come from is closed by ``on_close``."""
    closed: list[str] = []

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: x\n\n"
        finally:
            closed.append("events")  # pragma: no cover - never started

    async def on_close() -> None:
        closed.append("source")

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the connection is gone")

    response = EventStreamResponse(events(), on_close=on_close)
    with pytest.raises(OSError, match="gone"):
        await response(SCOPE, receive, send)
    assert closed == ["source"]
