"""The lean HTTP/1.1 client against raw servers on 127.0.0.1 that answer with exact bytes:
framing (length, chunked, close-delimited), content encoding, keep-alive, the connection
limit, timeouts, broken answers, TLS, and proxies (a tunnel for https)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import ssl
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mainsail.llm.providers.h1 import BadHttp, Origin, Unreachable


class RawServer:
    """Reads each request (head and Content-Length body) and lets ``answer`` write bytes."""

    def __init__(self, answer: Callable[[asyncio.StreamWriter, int], object]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                result = self.answer(writer, len(self.requests))
                if asyncio.iscoroutine(result):
                    await result
                await writer.drain()
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    answer: Callable[[asyncio.StreamWriter, int], object],
    *,
    max_connections: int = 4,
    keepalive_s: float = 5.0,
) -> AsyncIterator[tuple[RawServer, Origin]]:
    """A raw server answering with ``answer``, and a client of it (closed on the way out)."""
    server = RawServer(answer)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    origin = _origin(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        max_connections=max_connections,
        keepalive_s=keepalive_s,
    )
    try:
        yield server, origin
    finally:
        await origin.aclose()
        listener.close()


def _origin(url: str, *, max_connections: int = 4, keepalive_s: float = 5.0) -> Origin:
    return Origin(
        url,
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
        max_connections=max_connections,
        keepalive_s=keepalive_s,
    )


def _fixed(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


async def test_a_request_is_sent_whole_and_connections_are_kept_alive() -> None:
    async with serving(lambda w, n: w.write(_fixed(b"answer %d" % n))) as (server, origin):
        bodies = [(await origin.post(b'{"n":1}', connect_s=1, read_s=1))[1] for _ in range(3)]
    assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in first
    assert b"\r\nContent-Length: 7\r\n\r\n" in first
    assert first.endswith(b'\r\n\r\n{"n":1}')


async def test_chunked_and_close_delimited_answers_are_read_to_their_end() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )

    def close_delimited(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        writer.close()

    async with serving(lambda w, n: w.write(chunked)) as (server, origin):
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"abcde"
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"abcde"
    assert server.connections == 1
    async with serving(close_delimited) as (server, origin):
        for _ in range(2):  # the second call cannot reuse the closed connection
            assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"until the end"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        (b"gzip", gzip.compress),
        (b"deflate", zlib.compress),
        (b"deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some send
    ],
)
async def test_compressed_answers_are_decoded(
    encoding: bytes, compress: Callable[[bytes], bytes]
) -> None:
    text = b'{"choices":[]}' * 200
    answer = _fixed(compress(text), b"Content-Encoding: " + encoding)
    async with serving(lambda w, n: w.write(answer)) as (_, origin):
        response, body = await origin.post(b"{}", connect_s=1, read_s=1)
    assert body == text
    assert response.headers["content-encoding"] == encoding.decode()


async def test_a_connection_close_answer_is_not_reused_and_headers_are_read() -> None:
    answer = _fixed(b"{}", b"Connection: close", b"Retry-After: 7")
    async with serving(lambda w, n: w.write(answer)) as (server, origin):
        for _ in range(2):
            response, _ = await origin.post(b"{}", connect_s=1, read_s=1)
    assert response.headers.get("retry-after") == "7"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_used_again() -> None:
    def answer_and_hang_up(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(_fixed(b"{}"))  # keep-alive by the headers, then closed anyway
        writer.close()

    async with serving(answer_and_hang_up) as (server, origin):
        await origin.post(b"{}", connect_s=1, read_s=1)
        await asyncio.sleep(0.05)  # the close reaches the client
        await origin.post(b"{}", connect_s=1, read_s=1)
    assert server.connections == 2


async def test_idle_connections_older_than_the_keepalive_are_replaced() -> None:
    async with serving(lambda w, n: w.write(_fixed(b"{}")), keepalive_s=0.05) as (server, origin):
        await origin.post(b"{}", connect_s=1, read_s=1)
        await asyncio.sleep(0.1)
        await origin.post(b"{}", connect_s=1, read_s=1)
    assert server.connections == 2


async def test_calls_beyond_the_connection_limit_wait_for_a_free_one() -> None:
    in_flight = 0
    most = 0

    async def slow(writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        writer.write(_fixed(b"{}"))

    async with serving(slow, max_connections=2) as (server, origin):
        results = await asyncio.gather(
            *(origin.post(b"{}", connect_s=1, read_s=2) for _ in range(10))
        )
    assert [body for _, body in results] == [b"{}"] * 10
    assert most == 2
    assert server.connections == 2


async def test_waiting_for_a_free_connection_is_bounded() -> None:
    async def never(writer: asyncio.StreamWriter, _: int) -> None:
        await asyncio.sleep(10)

    async with serving(never, max_connections=1) as (_, origin):
        first = asyncio.create_task(origin.post(b"{}", connect_s=1, read_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError, match="no free connection"):
            await origin.post(b"{}", connect_s=1, read_s=0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_no_byte_within_the_read_limit_is_a_timeout_and_the_socket_is_dropped() -> None:
    calls = 0

    async def first_hangs(writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal calls
        calls += 1
        if n == 1:
            await asyncio.sleep(1)
        writer.write(_fixed(b"late" if n == 1 else b"fresh"))

    async with serving(first_hangs) as (server, origin):
        with pytest.raises(TimeoutError, match="no byte"):
            await origin.post(b"{}", connect_s=1, read_s=0.1)
        # The late answer must not be read as the next call's.
        assert (await origin.post(b"{}", connect_s=1, read_s=2))[1] == b"fresh"
    assert server.connections == 2


async def test_a_slow_stream_that_keeps_sending_is_not_timed_out() -> None:
    async def trickle(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.3 s in all, never 0.15 s without a byte
            await asyncio.sleep(0.05)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with (
        serving(trickle) as (_, origin),
        origin.stream(b"{}", connect_s=1, read_s=0.15) as answer,
    ):
        blocks = [block async for block in answer.iter_any()]
    assert b"".join(blocks) == b"x" * 6
    assert len(blocks) >= 2  # read as it came


async def test_a_large_stream_is_read_whole_through_flow_control() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, past the pause threshold

    def big(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(_fixed(payload))

    async with (
        serving(big) as (_, origin),
        origin.stream(b"{}", connect_s=1, read_s=2) as answer,
    ):
        await asyncio.sleep(0.1)  # let it pile up: reading pauses, then resumes
        received = await answer.read()
    assert received == payload


async def test_a_stream_left_before_its_end_does_not_go_back_to_the_pool() -> None:
    def endless(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")

    async with serving(endless) as (server, origin):
        for _ in range(2):
            async with origin.stream(b"{}", connect_s=1, read_s=1) as answer:
                async for block in answer.iter_any():
                    assert block == b"first"
                    break
    assert server.connections == 2


async def test_an_answer_cut_off_midway_is_a_connection_error() -> None:
    def cut(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        writer.close()

    async with serving(cut) as (_, origin):
        with pytest.raises(ConnectionError):
            await origin.post(b"{}", connect_s=1, read_s=1)
        async with origin.stream(b"{}", connect_s=1, read_s=1) as answer:
            with pytest.raises(ConnectionError):
                await answer.read()


async def test_bytes_that_are_not_http_are_refused() -> None:
    async with serving(lambda w, n: w.write(b"SSH-2.0-OpenSSH\r\n\r\n")) as (_, origin):
        with pytest.raises(BadHttp):
            await origin.post(b"{}", connect_s=1, read_s=1)


async def test_a_port_nobody_listens_on_is_unreachable() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    origin = _origin(f"http://127.0.0.1:{port}/v1/chat/completions")
    try:
        with pytest.raises(Unreachable):
            await origin.post(b"{}", connect_s=1, read_s=1)
        # The failed attempt gave its place back: the limit is not used up by failures.
        assert origin._open == 0
    finally:
        await origin.aclose()


def test_urls_it_cannot_speak_to_are_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http"):
        _origin("ftp://example.com/x")
    origin = _origin("https://api.example.com/v1/chat/completions?api-version=1")
    assert (origin.host, origin.port, origin.ssl is not None) == ("api.example.com", 443, True)
    assert origin._head.startswith(
        b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\nHost: api.example.com\r\n"
    )


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client
    context that trusts exactly that certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


class TunnelProxy:
    """An HTTP proxy that answers CONNECT with ``reply`` and, on 200, pipes bytes both ways."""

    def __init__(self, reply: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n") -> None:
        self.reply = reply
        self.heads: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        writer.write(self.reply)
        if not self.reply.startswith(b"HTTP/1.1 200"):
            writer.close()
            return
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_https_origins_are_spoken_to_over_tls_directly_and_through_a_tunnel(
    tmp_path: Path,
) -> None:
    server_tls, client_tls = _tls_contexts(tmp_path)
    server = RawServer(lambda w, n: w.write(_fixed(b"secret %d" % n)))
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=server_tls)
    port = listener.sockets[0].getsockname()[1]
    proxy = TunnelProxy()
    proxy_listener = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy_port = proxy_listener.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    try:
        direct = Origin(url, headers={}, max_connections=2, keepalive_s=5, ssl_context=client_tls)
        tunnelled = Origin(
            url,
            headers={"Authorization": "Bearer provider-key"},
            max_connections=2,
            keepalive_s=5,
            ssl_context=client_tls,
            proxy=f"http://127.0.0.1:{proxy_port}",
            proxy_headers={"Proxy-Authorization": "Basic cHJveHk="},
        )
        try:
            assert (await direct.post(b"{}", connect_s=2, read_s=2))[1] == b"secret 1"
            assert (await tunnelled.post(b"{}", connect_s=2, read_s=2))[1] == b"secret 2"
            assert (await tunnelled.post(b"{}", connect_s=2, read_s=2))[1] == b"secret 3"
        finally:
            await direct.aclose()
            await tunnelled.aclose()
        untrusting = Origin(url, headers={}, max_connections=1, keepalive_s=5)
        with pytest.raises(Unreachable):  # a certificate the default trust store refuses
            await untrusting.post(b"{}", connect_s=2, read_s=2)
    finally:
        listener.close()
        proxy_listener.close()
    # One tunnel, kept alive; the proxy saw its own credential and never the provider's key.
    assert server.connections == 2  # (the untrusting handshake never reached the server)
    [head] = proxy.heads
    assert head.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic cHJveHk=" in head
    assert b"provider-key" not in head


async def test_a_proxy_that_refuses_the_tunnel_makes_the_origin_unreachable() -> None:
    proxy = TunnelProxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    listener = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    origin = Origin(
        "https://api.example.com/v1/chat/completions",
        headers={},
        max_connections=1,
        keepalive_s=5,
        proxy=f"http://127.0.0.1:{port}",
    )
    try:
        with pytest.raises(Unreachable, match="407"):
            await origin.post(b"{}", connect_s=2, read_s=2)
        assert origin._open == 0
    finally:
        await origin.aclose()
        listener.close()
    assert proxy.heads[0].startswith(b"CONNECT api.example.com:443 HTTP/1.1\r\n")


def test_only_plain_http_proxies_are_accepted() -> None:
    with pytest.raises(ValueError, match="proxies"):
        Origin(
            "https://api.example.com/v1",
            headers={},
            max_connections=1,
            keepalive_s=5,
            proxy="https://proxy.internal:3128",
        )


async def test_a_whole_answer_larger_than_the_streams_pause_threshold_is_read() -> None:
    payload = b"x" * (3 * 1024 * 1024)  # no flow control on a whole answer: no stall
    async with serving(lambda w, n: w.write(_fixed(payload))) as (_, origin):
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == payload


async def test_interim_answers_are_skipped_and_never_left_for_the_next_call() -> None:
    async def continue_then_answer(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(_fixed(b"answer %d" % n, b"X-Final: yes"))

    async with serving(continue_then_answer) as (server, origin):
        first, body = await origin.post(b"{}", connect_s=1, read_s=1)
        assert (first.status, body, first.headers.get("x-final")) == (200, b"answer 1", "yes")
        assert "link" not in first.headers
        async with origin.stream(b"{}", connect_s=1, read_s=1) as answer:
            assert (answer.status, await answer.read()) == (200, b"answer 2")
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"answer 3"
    assert server.connections == 1


async def test_a_second_answer_to_one_request_poisons_the_connection() -> None:
    async with serving(lambda w, n: w.write(_fixed(b"one") + _fixed(b"two"))) as (server, origin):
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"one"
        # Not reused: the extra answer would have been read as the next call's.
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"one"
    assert server.connections == 2


async def test_a_chunked_stream_left_at_its_last_event_keeps_its_connection() -> None:
    async def events(writer: asyncio.StreamWriter, _: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[END]\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)  # the closing chunk comes in a write of its own
        writer.write(b"0\r\n\r\n")

    async with serving(events) as (server, origin):
        for _ in range(3):
            async with origin.stream(b"{}", connect_s=1, read_s=1) as answer:
                async for block in answer.iter_any():
                    if block.endswith(b"[END]"):
                        break  # as the SSE reader leaves at [DONE]
    assert server.connections == 1


async def test_a_stream_paused_by_an_unread_body_is_resumed_before_reuse() -> None:
    big = b"y" * (1024 * 1024)

    async with serving(lambda w, n: w.write(_fixed(big if n == 1 else b"small"))) as (_, origin):
        async with origin.stream(b"{}", connect_s=1, read_s=1) as answer:
            await asyncio.sleep(0.1)  # more than the threshold arrives: reading pauses
            received = b""
            async for block in answer.iter_any():
                received += block
            assert received == big
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"small"


async def test_a_call_cancelled_while_waiting_for_a_connection_stays_cancelled() -> None:
    async def slow(writer: asyncio.StreamWriter, _: int) -> None:
        await asyncio.sleep(0.05)
        writer.write(_fixed(b"{}"))

    async with serving(slow, max_connections=1) as (_, origin):
        first = asyncio.create_task(origin.post(b"{}", connect_s=1, read_s=1))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(origin.post(b"{}", connect_s=1, read_s=1))
        await asyncio.sleep(0.01)
        waiting.cancel()
        origin._wake_one()  # a release in the same turn takes the waiter off first
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await first)[1] == b"{}"
        assert (await origin.post(b"{}", connect_s=1, read_s=1))[1] == b"{}"
