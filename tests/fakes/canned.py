"""A one-answer HTTP server on loopback, for upstream answers the shared fake cannot give."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Canned:
    """Answers every request with one fixed HTTP response, and counts the requests."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                + f"Content-Type: {self.content_type}\r\n".encode()
                + f"Content-Length: {len(self.body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + self.body
            )
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    """One server-sent event of an OpenAI chat completion stream, as ``Canned`` serves it."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    body = {
        "id": "chatcmpl-r",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "upstream-model",
        "choices": [choice],
    }
    return f"data: {json.dumps(body)}\n\n"
