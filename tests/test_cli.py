"""The command line, run as a user runs it: real processes, real embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.engine import URL

from mainsail import __version__
from mainsail.core import migrations
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.slow


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env["MAINSAIL_DATABASE__EMBEDDED_DIR"] = str(tmp_path / "pg")
    env["MAINSAIL_LOG__FORMAT"] = "json"
    env.update(extra)
    return env


def mainsail(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mainsail", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def postmaster_pids(data_dir: Path) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmdline and str(data_dir) in cmdline:
            pids.append(proc.pid)
    return pids


class Serving:
    def __init__(self, process: subprocess.Popen[str], base: str) -> None:
        self.process = process
        self.base = base

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        return self.process.returncode, out


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Serving] = []

    def start(*args: str, wait_for: str = "/health", **env: str) -> Serving:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "mainsail", "serve", "--port", str(port), *args],
            cwd=tmp_path,
            env=cli_env(tmp_path, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        serving = Serving(process, f"http://127.0.0.1:{port}")
        started.append(serving)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"serve exited early:\n{process.stdout.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(serving.base + wait_for, timeout=1).status_code == 200:
                    return serving
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("serve did not answer in time")

    yield start
    for serving in started:
        if serving.process.poll() is None:
            serving.stop()


def test_version(tmp_path: Path) -> None:
    result = mainsail(tmp_path, "version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_invalid_setting_fails_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = mainsail(tmp_path, "serve", MAINSAIL_HTTP__PORT="not-a-port")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "MAINSAIL_HTTP__PORT" in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_embedded_is_ready_and_stops_its_database_on_exit(
    tmp_path: Path, serve: object
) -> None:
    serving = serve(wait_for="/ready")  # type: ignore[operator]
    body = httpx.get(serving.base + "/ready").json()
    assert body["status"] == "ready"
    data_dir = (tmp_path / "pg").resolve()
    assert len(postmaster_pids(data_dir)) == 1

    # A second command from the same directory joins the running server.
    current = mainsail(tmp_path, "migrate", "current")
    assert current.returncode == 0, current.stderr
    assert "(head)" in current.stdout
    assert len(postmaster_pids(data_dir)) == 1
    assert httpx.get(serving.base + "/ready").status_code == 200

    code, _ = serving.stop()
    assert code == 0
    deadline = time.monotonic() + 15
    while postmaster_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert postmaster_pids(data_dir) == []


def test_embedded_data_dir_is_reused_across_restarts(tmp_path: Path, serve: object) -> None:
    first = serve(wait_for="/ready")  # type: ignore[operator]
    assert first.stop()[0] == 0
    version_file = tmp_path / "pg" / "PG_VERSION"
    created = version_file.stat().st_mtime
    second = serve(wait_for="/ready")  # type: ignore[operator]
    assert httpx.get(second.base + "/ready").status_code == 200
    assert version_file.stat().st_mtime == created  # no second initdb
    assert second.stop()[0] == 0


def test_two_workers_share_one_embedded_server(tmp_path: Path, serve: object) -> None:
    serving = serve("--workers", "2", wait_for="/ready")  # type: ignore[operator]
    for _ in range(6):
        assert httpx.get(serving.base + "/ready").status_code == 200
    assert len(postmaster_pids((tmp_path / "pg").resolve())) == 1
    assert len(psutil.Process(serving.process.pid).children()) >= 2
    assert serving.stop()[0] == 0


def test_port_in_use_fails_clearly_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mainsail(tmp_path, "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr
    assert not (tmp_path / "pg").exists()


def test_unwritable_data_dir_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = mainsail(
        tmp_path, "migrate", "current", MAINSAIL_DATABASE__EMBEDDED_DIR=str(blocker / "pg")
    )
    assert result.returncode == 1
    assert "a-file" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_server_that_cannot_start_fails_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "PG_VERSION").write_text("9\n")  # a data dir no server can open
    result = mainsail(tmp_path, "migrate", "current", MAINSAIL_DATABASE__EMBEDDED_DIR=str(broken))
    assert result.returncode == 1
    assert "failed to start" in result.stderr
    assert "Traceback" not in result.stderr
    assert postmaster_pids(broken.resolve()) == []


def test_serve_starts_while_external_database_is_down(tmp_path: Path, serve: object) -> None:
    dead = f"postgresql://app:pw-never-logged@127.0.0.1:{free_port()}/main"
    serving = serve(MAINSAIL_DATABASE_URL=dead)  # type: ignore[operator]
    assert httpx.get(serving.base + "/health").status_code == 200
    ready = httpx.get(serving.base + "/ready")
    assert ready.status_code == 503
    assert ready.json()["failing"] == ["database", "migrations"]
    code, output = serving.stop()
    assert code == 0
    assert "pw-never-logged" not in output
    assert "migrations_skipped" in output


def test_migrate_commands_against_an_external_database(
    tmp_path: Path, scratch_database: URL
) -> None:
    url = scratch_database.set(drivername="postgresql").render_as_string(hide_password=False)
    before = mainsail(tmp_path, "migrate", "current", MAINSAIL_DATABASE_URL=url)
    assert before.returncode == 0
    assert before.stdout.startswith("base (behind head")
    assert mainsail(tmp_path, "migrate", "upgrade", MAINSAIL_DATABASE_URL=url).returncode == 0
    (head,) = migrations.head_revisions()
    after = mainsail(tmp_path, "migrate", "current", MAINSAIL_DATABASE_URL=url)
    assert after.stdout.strip() == f"{head} (head)"
    down = mainsail(tmp_path, "migrate", "downgrade", "base", MAINSAIL_DATABASE_URL=url)
    assert down.returncode == 0
    assert mainsail(tmp_path, "migrate", "current", MAINSAIL_DATABASE_URL=url).stdout.startswith(
        "base"
    )


def test_migrate_against_unreachable_database_fails_in_one_line(tmp_path: Path) -> None:
    dead = f"postgresql://app:pw@127.0.0.1:{free_port()}/main"
    result = mainsail(tmp_path, "migrate", "upgrade", MAINSAIL_DATABASE_URL=dead)
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
