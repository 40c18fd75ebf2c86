"""The embedded PostgreSQL 16 + pgvector server, started from the ``pgserver`` package.

Every process that needs the database (each uvicorn worker, ``mainsail migrate`` run beside
a live ``mainsail serve``) calls ``attach()`` on the same data directory. The first starts the
server; the others find it running and register themselves as users of it. The server stops
when the last user releases it. Users that died without releasing (SIGKILL) are pruned on the
next attach, so a crashed process never pins the server forever.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import URL, make_url

from mainsail.core.logging import get_logger

DATABASE_NAME = "mainsail"
_HANDLES_FILE = ".handle_pids.json"

log = get_logger(__name__)

# pgserver keeps one server object per data dir and process; several attaches in one
# process (the serve command and a single worker's lifespan) share it, counted here.
_claims: dict[Path, int] = {}


class EmbeddedDatabaseError(Exception):
    """The embedded server could not be prepared; ``str()`` says why in one line."""


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    url: URL
    _server: Any = field(repr=False)
    _released: bool = field(default=False, repr=False)

    @property
    def postmaster_pid(self) -> int | None:
        pid: int | None = self._server.get_pid()
        return pid

    def release(self) -> None:
        """Drop this process's claim; the server stops if no other process holds one."""
        if self._released:
            return
        self._released = True
        _claims[self.data_dir] -= 1
        if _claims[self.data_dir] > 0:
            return
        del _claims[self.data_dir]
        try:
            self._server.cleanup()
        except Exception as exc:  # stopping is best effort; never mask the real exit reason
            log.warning("embedded_postgres_stop_failed", error=str(exc))

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def attach(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) the embedded server for ``data_dir`` and make sure our database exists."""
    data_dir = data_dir.expanduser().resolve()
    _prepare_directory(data_dir)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import PostgresServer, get_server
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise EmbeddedDatabaseError(f"the pgserver package is not importable: {exc}") from None

    with PostgresServer._lock:
        _prune_dead_handles(data_dir)
    try:
        server = get_server(data_dir, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL server in {data_dir} failed to start "
            f"({type(exc).__name__}); its log is {data_dir / 'log'}"
        ) from None
    raw_url = make_url(server.get_uri(database="postgres"))
    if not _claims.get(data_dir):
        try:
            _ensure_database(server.get_uri(database="postgres"), DATABASE_NAME)
        except EmbeddedDatabaseError:
            server.cleanup()
            raise
    _claims[data_dir] = _claims.get(data_dir, 0) + 1
    url = raw_url.set(drivername="postgresql+asyncpg", database=DATABASE_NAME, password=None)
    log.info("embedded_postgres_attached", data_dir=str(data_dir), pid=server.get_pid())
    return EmbeddedPostgres(data_dir=data_dir, url=url, _server=server)


def _prepare_directory(data_dir: Path) -> None:
    parent = data_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedDatabaseError(
            f"cannot create the embedded database directory {parent}: {exc.strerror or exc}"
        ) from None
    if not parent.is_dir():
        raise EmbeddedDatabaseError(f"{parent} is not a directory")
    target = data_dir if data_dir.exists() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise EmbeddedDatabaseError(
            f"the embedded database directory {target} is not writable by this user "
            "(set MAINSAIL_DATABASE__EMBEDDED_DIR to a writable path)"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise EmbeddedDatabaseError(f"{data_dir} exists and is not a directory")


def _prune_dead_handles(data_dir: Path) -> None:
    handles = data_dir / _HANDLES_FILE
    try:
        pids = json.loads(handles.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _ensure_database(admin_uri: str, name: str) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    psql = str(POSTGRES_BIN_PATH / "psql")
    check = subprocess.run(  # noqa: S603 - fixed executable, no shell, no user input
        # name is our own constant, never caller input
        [psql, admin_uri, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL server is not answering: {check.stderr.strip()[:200]}"
        )
    if check.stdout.strip() == "1":
        return
    create = subprocess.run(  # noqa: S603
        [psql, admin_uri, "-c", f'CREATE DATABASE "{name}"'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if create.returncode != 0 and "already exists" not in create.stderr:
        raise EmbeddedDatabaseError(
            f"could not create database {name!r}: {create.stderr.strip()[:200]}"
        )
