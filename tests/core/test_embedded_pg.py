"""The embedded server's memory settings: sized from the machine, overridable, in effect."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mainsail.core import embedded_pg
from mainsail.settings import DatabaseSettings, SettingsError, load_settings

GIB = 2**30


def psql(server: embedded_pg.EmbeddedPostgres, statement: str) -> str:
    uri = server._server.get_uri(database=embedded_pg.DATABASE_NAME)
    result = subprocess.run(
        [str(embedded_pg.postgres_bin() / "psql"), uri, "-tAc", statement],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def show(server: embedded_pg.EmbeddedPostgres, name: str) -> str:
    return psql(server, f"SHOW {name}")


def test_memory_is_sized_from_the_machine() -> None:
    sized = embedded_pg.memory_settings(DatabaseSettings(), memory=24 * GIB, shm=None)
    assert sized == {
        "shared_buffers": "6144MB",
        "effective_cache_size": "12288MB",
        "maintenance_work_mem": "3072MB",
        "work_mem": "48MB",
    }
    small = embedded_pg.memory_settings(DatabaseSettings(), memory=GIB // 4, shm=None)
    assert small["shared_buffers"] == "128MB"  # never below PostgreSQL's default
    assert small["maintenance_work_mem"] == "64MB"
    assert small["work_mem"] == "4MB"
    large = embedded_pg.memory_settings(DatabaseSettings(), memory=512 * GIB, shm=None)
    assert large["shared_buffers"] == "8192MB"
    assert large["maintenance_work_mem"] == "4096MB"
    assert large["work_mem"] == "64MB"
    # A parallel index build keeps its graph in /dev/shm: never more than half of it.
    docker = embedded_pg.memory_settings(DatabaseSettings(), memory=24 * GIB, shm=64 * 2**20)
    assert docker["maintenance_work_mem"] == "64MB"


def test_settings_override_each_value() -> None:
    settings = DatabaseSettings(embedded_shared_buffers="1GB", embedded_work_mem="8 MB")
    sized = embedded_pg.memory_settings(settings, memory=24 * GIB, shm=None)
    assert sized["shared_buffers"] == "1GB"
    assert sized["work_mem"] == "8MB"
    assert sized["maintenance_work_mem"] == "3072MB"


def test_a_size_without_units_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_DATABASE__EMBEDDED_SHARED_BUFFERS", "4096")
    with pytest.raises(SettingsError, match="EMBEDDED_SHARED_BUFFERS"):
        load_settings()


def test_the_server_starts_with_them_fresh_and_existing(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    first = DatabaseSettings(embedded_shared_buffers="48MB", embedded_work_mem="6MB")
    with embedded_pg.attach(data_dir, first) as server:  # a fresh directory: initdb, restart
        assert show(server, "shared_buffers") == "48MB"
        assert show(server, "work_mem") == "6MB"
    second = DatabaseSettings(embedded_shared_buffers="80MB")
    with embedded_pg.attach(data_dir, second) as server:  # an existing one: no restart
        assert show(server, "shared_buffers") == "80MB"
        assert (
            show(server, "maintenance_work_mem")
            == (embedded_pg.memory_settings(second)["maintenance_work_mem"])
        )
    with embedded_pg.attach(data_dir, DatabaseSettings(embedded_tune=False)) as server:
        assert show(server, "shared_buffers") == "128MB"  # PostgreSQL's default


def test_a_server_that_will_not_start_with_them_starts_without(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with embedded_pg.attach(data_dir, DatabaseSettings(embedded_tune=False)):
        pass
    impossible = DatabaseSettings(embedded_shared_buffers="64TB")
    with embedded_pg.attach(data_dir, impossible) as server:
        assert show(server, "shared_buffers") == "128MB"


VECTOR_VERSION = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"


def test_an_older_vector_extension_is_updated_on_attach(tmp_path: Path) -> None:
    """A data directory made by an earlier release holds an older ``vector``; the bundled
    library's version is installed the next time the server is attached."""
    data_dir = tmp_path / "pg"
    settings = DatabaseSettings(embedded_tune=False)
    with embedded_pg.attach(data_dir, settings) as server:
        assert psql(server, VECTOR_VERSION) == ""  # the migrations create it, not attach
        psql(server, "CREATE EXTENSION vector")
        latest = psql(server, VECTOR_VERSION)
        assert latest >= "0.8"
        # What an earlier release left behind: the catalog says the previous version.
        psql(server, "UPDATE pg_extension SET extversion = '0.8.4' WHERE extname = 'vector'")
        assert psql(server, VECTOR_VERSION) == "0.8.4"
    with embedded_pg.attach(data_dir, settings) as server:
        assert psql(server, VECTOR_VERSION) == latest
        assert psql(server, "SELECT '[1,2]'::vector <=> '[2,4]'::vector") == "0"
        assert psql(server, "SHOW server_version").startswith("16.")
