"""The OpenAI adapter's direct chat path: what the shared adapter tests in ``test_providers``
cannot show (they run it against the fake too): it introduces itself exactly as the SDK does,
keeps its connections alive, and reads the edges of the SSE format as the SDK reads them."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest

from mainsail.llm.errors import UpstreamBadResponse, UpstreamUnavailable
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.providers.openai import OpenAIAdapter, Transport
from mainsail.llm.providers.openai_http import _env_proxy, _lines
from mainsail.llm.types import StreamEnd, StreamEvent, TextDelta
from tests.fakes.provider_server import FakeProviderServer
from tests.llm.test_providers import ENTRY, question

# The SDK sends its read limit as a header on each call; the direct path does not.
_PER_CALL = {"x-stainless-read-timeout", "connection"}


def _adapter(base_url: str, transport: Transport = "direct") -> OpenAIAdapter:
    return OpenAIAdapter(
        name="p",
        api_key="sk-test",
        base_url=base_url,
        timeouts=Timeouts(connect_s=1, read_s=2, total_s=2),
        max_connections=4,
        transport=transport,
    )


async def test_both_transports_send_the_same_headers_and_body(
    fake_provider: FakeProviderServer,
) -> None:
    sent = {}
    for transport in ("direct", "sdk"):
        adapter = _adapter(fake_provider.openai_base_url, transport)  # type: ignore[arg-type]
        try:
            await adapter.complete(question(), ENTRY)
            [event async for event in adapter.stream(question(), ENTRY)]
        finally:
            await adapter.aclose()
        sent[transport] = fake_provider.calls[-2:]
    for direct, sdk in zip(sent["direct"], sent["sdk"], strict=True):
        assert direct.body == sdk.body
        assert {k: v for k, v in direct.headers.items() if k not in _PER_CALL} == {
            k: v for k, v in sdk.headers.items() if k not in _PER_CALL
        }
        assert direct.headers["authorization"] == "Bearer sk-test"


class _CannedServer:
    """A raw HTTP/1.1 server that answers every request with the same bytes and counts the
    connections it accepted."""

    def __init__(self, body: bytes, content_type: bytes = b"text/event-stream") -> None:
        self.response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(self.response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def _collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


def _sse(*events: str) -> bytes:
    return "".join(events).encode()


async def _streamed(body: bytes) -> list[StreamEvent]:
    """The events the direct transport reads from a server that answers with ``body``."""
    async with _CannedServer(body) as url:
        adapter = _adapter(url)
        try:
            return await _collect(adapter.stream(question(), ENTRY))
        finally:
            await adapter.aclose()


_CHUNK = '{"id":"c1","choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
_FINISH = '{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
_USAGE = '{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


async def test_sse_comments_fields_and_crlf_are_read_as_the_format_says() -> None:
    body = _sse(
        ": a comment line\r\n\r\n",
        "event: message\r\nid: 7\r\nretry: 100\r\n",
        "data: " + _CHUNK % "Hel" + "\r\n\r\n",
        "data:" + _CHUNK % "lo" + "\n\n",
        "data: " + _FINISH + "\n\n",
        "data: " + _USAGE + "\n\n",
        "data: [DONE]\n\n",
    )
    events = await _streamed(body)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello"
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.input_tokens, end.usage.output_tokens) == (3, 2)


@pytest.mark.parametrize("transport", ["direct", "sdk"])
async def test_an_error_object_inside_the_stream_is_a_failure_not_an_answer(
    transport: Transport,
) -> None:
    body = _sse(
        "data: " + _CHUNK % "partial" + "\n\n",
        'data: {"error":{"message":"upstream secret detail","type":"server_error"}}\n\n',
        "data: " + _FINISH + "\n\n",
    )
    async with _CannedServer(body) as url:
        adapter = _adapter(url, transport)
        seen: list[StreamEvent] = []
        try:
            with pytest.raises(UpstreamUnavailable) as caught:
                async for event in adapter.stream(question(), ENTRY):
                    seen.append(event)
        finally:
            await adapter.aclose()
    assert "secret" not in caught.value.message
    assert not any(isinstance(e, StreamEnd) for e in seen)


async def test_a_stream_that_is_not_json_is_unreadable() -> None:
    with pytest.raises(UpstreamBadResponse):
        await _streamed(_sse("data: {not json\n\n"))


_COMPLETION = (
    b'{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
)


async def test_connections_are_kept_alive_across_answers_and_streams() -> None:
    completion = _COMPLETION
    answers = _CannedServer(completion, b"application/json")
    async with answers as url:
        adapter = _adapter(url)
        try:
            for _ in range(5):
                assert (await adapter.complete(question(), ENTRY)).message.content == "hi"
        finally:
            await adapter.aclose()
    streams = _CannedServer(_sse("data: " + _FINISH + "\n\n", "data: [DONE]\n\n"))
    async with streams as url:
        adapter = _adapter(url)
        try:
            for _ in range(5):
                await _collect(adapter.stream(question(), ENTRY))
        finally:
            await adapter.aclose()
    assert (answers.connections, streams.connections) == (1, 1)


async def test_an_event_longer_than_aiohttps_line_limit_is_read_whole() -> None:
    # aiohttp's line reader refuses lines over 128 KiB; a long tool call can be one line.
    text = "x" * 300_000
    long_chunk = json.dumps(
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    )
    body = _sse("data: " + long_chunk + "\n\n", "data: " + _FINISH + "\n\n", "data: [DONE]\n\n")
    events = await _streamed(body)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text


class _Blocks:
    """A response body that arrives in the given blocks."""

    def __init__(self, *blocks: bytes) -> None:
        self.blocks = blocks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for block in self.blocks:
            yield block


@pytest.mark.parametrize(
    "blocks",
    [
        (b"a\r\nb\n\nc",),
        (b"a\r", b"\nb\n", b"\nc"),  # CRLF split across two blocks: one line end, not two
        (b"a\rb", b"\n\r", b"\n", b"c"),  # lone CR and LF end lines too
        (b"", b"a", b"\r\n", b"b\n\n", b"c"),
    ],
)
async def test_lines_end_where_the_sse_format_says_whatever_the_blocks(
    blocks: tuple[bytes, ...],
) -> None:
    lines = [line async for line in _lines(_Blocks(*blocks).iter_any())]
    assert lines == [b"a", b"b", b"", b"c"]


def _without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_the_environments_proxy_is_honoured_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_proxies(monkeypatch)
    assert _env_proxy("https://api.example.com/v1/chat/completions") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://us%40er:p%3Ass@proxy.internal:3128")
    proxy, headers = _env_proxy("https://api.example.com/v1/chat/completions")
    assert proxy == "http://proxy.internal:3128"
    assert headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"us@er:p:ss").decode()}
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert _env_proxy("https://api.example.com/v1/chat/completions") == (None, None)
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("ALL_PROXY", "proxy.internal:8080")
    assert _env_proxy("http://10.0.0.5:8000/v1/chat/completions") == (
        "http://proxy.internal:8080",
        None,
    )


async def test_calls_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_proxies(monkeypatch)
    proxy = _CannedServer(_COMPLETION, b"application/json")
    async with proxy as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://me:pw@")[:-3])
        # The provider's address is never connected to: the proxy answers for it.
        adapter = _adapter("http://provider.invalid:8000/v1")
        try:
            assert (await adapter.complete(question(), ENTRY)).message.content == "hi"
        finally:
            await adapter.aclose()
    [head] = proxy.heads
    assert head.startswith(b"POST http://provider.invalid:8000/v1/chat/completions HTTP/1.1")
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"me:pw") in head


def test_a_proxy_reached_over_https_sends_chat_through_the_sdks_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_proxies(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.internal:3128")
    assert _adapter("https://api.example.com/v1").wire is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    wire = _adapter("https://api.example.com/v1").wire
    assert wire is not None
    assert wire.proxy == "http://proxy.internal:3128"
