"""Apps with small request limits, on memory or on a real Redis.

A test picks its limits by parametrizing ``rate_limit`` (merged over generous defaults) and
its storage with the ``storage`` fixture (``memory`` unless parametrized). Every test gets its
own key prefix, so Redis counters never leak from one test into another.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fixtures.app import make_settings
from tests.fixtures.servers import free_port

REDIS_SERVER = "/usr/bin/redis-server"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MAINSAIL_TEST_REDIS_URL, or a private redis-server on a free loopback port."""
    if url := os.environ.get("MAINSAIL_TEST_REDIS_URL"):
        yield url
        return
    binary = shutil.which("redis-server") or (REDIS_SERVER if Path(REDIS_SERVER).exists() else None)
    if binary is None:
        pytest.skip("redis-server is not installed and MAINSAIL_TEST_REDIS_URL is not set")
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_redis(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_redis(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("redis-server did not answer PING within 10 s")


@pytest.fixture
def storage() -> str:
    return "memory"


@pytest.fixture
def rate_limit() -> dict[str, Any]:
    return {}


@pytest.fixture
def storage_url(storage: str, request: pytest.FixtureRequest) -> str:
    if storage == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def key_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(
    database_url: URL, storage_url: str, key_prefix: str, rate_limit: dict[str, Any]
) -> Settings:
    """Overrides the shared ``settings``: the ``app`` and ``client`` fixtures use these."""
    return limited_settings(database_url, storage_url, key_prefix, **rate_limit)


def limited_settings(
    database_url: URL, storage_url: str, key_prefix: str, **rate_limit: Any
) -> Settings:
    values: dict[str, Any] = {
        "storage_url": storage_url,
        "key_prefix": key_prefix,
        # Generous unless a test says otherwise: signing in is an anonymous request.
        "user": "1000/minute",
        "admin": "1000/minute",
        "anonymous": "1000/minute",
        **rate_limit,
    }
    return make_settings(database_url, rate_limit=values)
