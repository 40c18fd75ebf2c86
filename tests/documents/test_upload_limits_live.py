"""Uploads at their edges, against the app served by uvicorn over a real socket: a body that
crosses the size limit without a Content-Length, and an upload still streaming when the
server shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS
from tests.fixtures.app import make_settings, truncate_all, wait_until
from tests.openai_compat.conftest import open_account

LIMIT = 4096  # MAINSAIL_DOCUMENTS__MAX_UPLOAD_BYTES
BODY_LIMIT = 8192  # MAINSAIL_HTTP__MAX_BODY_BYTES (the JSON body's limit)
PREAMBLE = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(
        database_url,
        jobs=QUICK_JOBS,
        documents={"max_upload_bytes": LIMIT},
        http={"max_body_bytes": BODY_LIMIT},
    )


@contextlib.contextmanager
def serving(app: FastAPI, *, graceful_shutdown_s: int = 10) -> Iterator[tuple[str, uvicorn.Server]]:
    """``app`` under uvicorn (as ``mainsail serve`` runs it) on a free loopback port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=graceful_shutdown_s,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up")
        time.sleep(0.01)
    else:
        raise RuntimeError("uvicorn did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
async def served(
    settings: Settings, database_url: URL
) -> AsyncIterator[tuple[str, str, uvicorn.Server, Path]]:
    """(base URL, an API key, the server, the staging folder)."""
    app = create_app(settings)
    root = settings.documents.storage_dir or settings.data_dir / "documents"
    with serving(app, graceful_shutdown_s=1) as (base_url, server):
        key, _ = await open_account(base_url, settings)
        yield base_url, key, server, root / ".staging"
    await truncate_all(database_url)


def staged(staging: Path) -> set[str]:
    return {p.name for p in staging.iterdir()} if staging.exists() else set()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def request_head(key: str, content_type: str, framing: str) -> bytes:
    return (
        f"POST /documents HTTP/1.1\r\nHost: testserver\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\n\r\n"
    ).encode()


def _connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_a_chunked_body_over_the_limit_is_refused_and_not_read_further(
    served: tuple[str, str, uvicorn.Server, Path], kind: str
) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the 413 comes as the body crosses the
    limit, and the server must stop taking the body then (close the connection), not keep
    reading and discarding whatever the client goes on sending, without end."""
    base_url, key, _, _ = served

    def exchange() -> tuple[bytes, bool, int]:
        sock = _connect(base_url)
        if kind == "multipart":
            start = chunk(PREAMBLE)
            content_type = "multipart/form-data; boundary=b0undary"
        else:
            start = chunk(b'{"text": "')
            content_type = "application/json"
        head = request_head(key, content_type, "Transfer-Encoding: chunked")
        sock.sendall(head + start)
        sock.setblocking(False)
        answer, closed, after_answer = b"", False, 0
        answered_at: float | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if answered_at is not None and time.monotonic() - answered_at > 3:
                break  # three seconds of sending after the answer: it is still being read
            try:
                data = sock.recv(65536)
                if not data:
                    closed = True
                    break
                answer += data
                if answered_at is None and b"\r\n\r\n" in answer:
                    answered_at = time.monotonic()
            except BlockingIOError:
                pass
            except OSError:  # reset
                closed = True
                break
            try:
                sock.send(chunk(b"w" * 1024))
                if answered_at is not None:
                    after_answer += 1024
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:  # the server closed its end: the send is refused
                closed = True
                break
            time.sleep(0.001)
        sock.close()
        return answer, closed, after_answer

    answer, closed, after_answer = await asyncio.to_thread(exchange)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert closed, (
        f"the connection stayed open after the 413 and {after_answer} more bytes of the "
        "refused body were taken"
    )


async def test_an_upload_still_streaming_at_shutdown_leaves_no_staging_file(
    served: tuple[str, str, uvicorn.Server, Path],
) -> None:
    """A deploy or restart stops the server while a slow client is uploading: once the
    graceful shutdown's time is up uvicorn cancels the request, and its half-written staging
    file must go (nothing else ever removes it)."""
    base_url, key, server, staging = served
    before = staged(staging)
    sock = _connect(base_url)
    try:
        head = request_head(
            key, "multipart/form-data; boundary=b0undary", f"Content-Length: {LIMIT}"
        )
        sock.sendall(head + PREAMBLE + b"The first part of a slow upload. " * 20)

        async def staging_file_open() -> bool:
            return bool(staged(staging) - before)

        await wait_until(staging_file_open, within_s=10)
        server.should_exit = True  # as SIGTERM does; the upload never finishes

        async def stopped() -> bool:
            return not server.server_state.tasks  # the upload's task ended (cancelled)

        await wait_until(stopped, within_s=15, interval=0.1)
        await asyncio.sleep(0.5)
    finally:
        sock.close()
    assert staged(staging) - before == set()
