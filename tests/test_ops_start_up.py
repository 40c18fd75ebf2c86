"""Operating the service: start-up errors, the command line without a database, bad arguments.

README ("Configuration"): "An invalid value stops start-up with one line naming the variable
and the expected form. Secrets are never logged or echoed in errors." The CLI's own tests hold
its commands to one-line failures without a traceback (tests/test_cli.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import SettingsError, load_settings
from tests.fixtures.servers import free_port

pytestmark = pytest.mark.slow


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env["MAINSAIL_DATABASE__EMBEDDED_DIR"] = str(tmp_path / "pg")
    env["MAINSAIL_LOG__FORMAT"] = "json"
    env.update(extra)
    return env


def mainsail(
    tmp_path: Path, *args: str, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mainsail", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dead_database() -> str:
    return f"postgresql://app:pw-never-shown@127.0.0.1:{free_port()}/main"


# --- settings ------------------------------------------------------------------------------


def test_list_setting_that_is_not_json_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    """A list setting (.env.example: "as a JSON list") given as a bare value is an invalid
    value like any other: one line naming MAINSAIL_HTTP__CORS_ORIGINS, exit 2 (pydantic-settings'
    own SettingsError escaped as a traceback naming "http")."""
    result = mainsail(tmp_path, "serve", MAINSAIL_HTTP__CORS_ORIGINS="http://localhost:5173")
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2
    assert "MAINSAIL_HTTP__CORS_ORIGINS" in result.stderr


def test_database_url_with_an_unescaped_at_sign_never_echoes_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password holding "@" or ":" (not percent-encoded) makes SQLAlchemy's URL parser read
    part of it as the port; its int() error, passed through as the message, shows that part
    of the password."""
    monkeypatch.setenv("MAINSAIL_DATABASE_URL", "postgresql://admin:p@ss:Hunter2Secret@db/app")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert "MAINSAIL_DATABASE_URL" in message
    assert "Hunter2Secret" not in message


def test_unparseable_catalogue_file_stops_start_up_in_one_line_naming_it(
    tmp_path: Path,
) -> None:
    """A catalogue file that does not parse stops start-up in one line naming the variable (it
    was found in the app's lifespan, after migrations: a traceback, exit 3)."""
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text("this is [not toml\n")
    result = mainsail(
        tmp_path,
        "serve",
        "--port",
        str(free_port()),
        timeout=60,
        MAINSAIL_DATABASE_URL=dead_database(),
        MAINSAIL_LLM__CATALOGUE_FILE=str(catalogue),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert "MAINSAIL_LLM__CATALOGUE_FILE" in result.stderr


# --- the command line ----------------------------------------------------------------------


def test_serve_with_a_port_out_of_range_fails_without_a_traceback(tmp_path: Path) -> None:
    """--port is checked against 1..65535 (70000 reached socket.bind, whose OverflowError
    escaped as a traceback)."""
    result = mainsail(tmp_path, "serve", "--port", "70000", MAINSAIL_DATABASE_URL=dead_database())
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode in (1, 2)
    assert "70000" in result.stderr or "port" in result.stderr.lower()


def test_worker_against_unreachable_database_fails_in_one_line(tmp_path: Path) -> None:
    """`worker` turns an unreachable database into one line, as `migrate` and `serve` do."""
    result = mainsail(tmp_path, "worker", MAINSAIL_DATABASE_URL=dead_database())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert "unreachable" in result.stderr
    assert "pw-never-shown" not in result.stderr


def test_migrate_upgrade_to_an_unknown_revision_fails_in_one_line(
    tmp_path: Path, scratch_database: URL
) -> None:
    """A mistyped revision is a bad argument: one line naming it, not Alembic's
    CommandError traceback."""
    url = scratch_database.set(drivername="postgresql").render_as_string(hide_password=False)
    result = mainsail(tmp_path, "migrate", "upgrade", "no-such-revision", MAINSAIL_DATABASE_URL=url)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert "no-such-revision" in result.stderr


# --- request ids ---------------------------------------------------------------------------


async def test_v1_error_carries_one_request_id_header(client: httpx.AsyncClient) -> None:
    """README: every response carries X-Request-ID (the caller's, if short and safe). Once: a /v1
    error set the header itself and the middleware appended it again (httpx, and so the
    OpenAI SDK's ``_request_id``, read "req-42, req-42")."""
    response = await client.get("/v1/models", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 401
    assert response.headers.get_list("x-request-id") == ["req-42"]
    assert response.headers["x-request-id"] == "req-42"
