"""`mainsail users ...` against a real database, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from mainsail.core import migrations
from tests.test_cli import cli_env

pytestmark = pytest.mark.slow


@pytest.fixture
def db_env(scratch_database: URL) -> dict[str, str]:
    migrations.upgrade(scratch_database)
    url = scratch_database.set(drivername="postgresql").render_as_string(hide_password=False)
    return {
        "MAINSAIL_DATABASE_URL": url,
        # Cheap hashing keeps these process-level tests quick.
        "MAINSAIL_AUTH__ARGON2_TIME_COST": "1",
        "MAINSAIL_AUTH__ARGON2_MEMORY_KIB": "1024",
        "MAINSAIL_AUTH__ARGON2_PARALLELISM": "1",
    }


def users(
    tmp_path: Path, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mainsail", "users", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bootstrap_an_admin_then_manage_users(tmp_path: Path, db_env: dict[str, str]) -> None:
    created = users(
        tmp_path,
        db_env,
        "create",
        "--email",
        "Root@Example.com",
        "--role",
        "admin",
        "--password-stdin",
        stdin="a very long admin passphrase\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created admin root@example.com" in created.stdout
    assert "passphrase" not in created.stdout + created.stderr
    assert created.stderr == ""  # quiet: no log lines on a one-shot command

    users(
        tmp_path,
        db_env,
        "create",
        "--email",
        "ada@example.com",
        "--password-stdin",
        stdin="another long passphrase\n",
    )
    listed = users(tmp_path, db_env, "list")
    assert listed.returncode == 0
    assert "admin  active    root@example.com" in listed.stdout
    assert "user   active    ada@example.com" in listed.stdout
    assert "2 of 2 users" in listed.stdout

    assert users(tmp_path, db_env, "set-role", "ada@example.com", "admin").returncode == 0
    assert users(tmp_path, db_env, "disable", "ADA@example.com").returncode == 0
    listed = users(tmp_path, db_env, "list").stdout
    assert "admin  disabled  ada@example.com" in listed
    assert users(tmp_path, db_env, "enable", "ada@example.com").returncode == 0
    reset = users(
        tmp_path,
        db_env,
        "set-password",
        "ada@example.com",
        "--password-stdin",
        stdin="a fresh long passphrase\n",
    )
    assert reset.returncode == 0, reset.stderr
    assert "sessions have ended" in reset.stdout


def test_the_password_never_comes_from_the_command_line(
    tmp_path: Path, db_env: dict[str, str]
) -> None:
    result = users(
        tmp_path, db_env, "create", "--email", "a@example.com", "--password", "on-the-cmdline"
    )
    assert result.returncode == 2
    assert "No such option" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["create", "--email", "not-an-email", "--password-stdin"],
            "long enough pass\n",
            "invalid email",
        ),
        (
            ["create", "--email", "a@example.com", "--password-stdin"],
            "short\n",
            "at least 12 characters",
        ),
        (["create", "--email", "a@example.com", "--password-stdin"], "\n", "no password"),
        (["disable", "nobody@example.com"], None, "User not found"),
        (["set-role", "a@example.com", "root"], None, "Invalid value"),
    ],
)
def test_bad_input_fails_in_one_line(
    tmp_path: Path, db_env: dict[str, str], args: list[str], stdin: str | None, message: str
) -> None:
    result = users(tmp_path, db_env, *args, stdin=stdin)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_email_and_last_admin_are_refused(tmp_path: Path, db_env: dict[str, str]) -> None:
    args = ["create", "--email", "root@example.com", "--role", "admin", "--password-stdin"]
    assert users(tmp_path, db_env, *args, stdin="a long passphrase!\n").returncode == 0
    again = users(tmp_path, db_env, *args, stdin="a long passphrase!\n")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    demote = users(tmp_path, db_env, "set-role", "root@example.com", "user")
    assert demote.returncode == 1
    assert "last active admin" in demote.stderr


def test_users_commands_refuse_an_unmigrated_database(
    tmp_path: Path, scratch_database: URL
) -> None:
    url = scratch_database.set(drivername="postgresql").render_as_string(hide_password=False)
    result = users(tmp_path, {"MAINSAIL_DATABASE_URL": url}, "list")
    assert result.returncode == 1
    assert "mainsail migrate upgrade" in result.stderr
