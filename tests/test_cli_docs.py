"""The command line as the README shows it: `migrate downgrade -1`, and the embedded database
inside MAINSAIL_DATA_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from mainsail.core import migrations

pytestmark = pytest.mark.slow


def _mainsail(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    clean.update({"MAINSAIL_LOG__FORMAT": "json", **env})
    return subprocess.run(
        [sys.executable, "-m", "mainsail", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_migrate_downgrade_minus_one_as_the_readme_shows(
    tmp_path: Path, scratch_database: URL
) -> None:
    """README ("`mainsail migrate downgrade REV` | roll back, e.g. `-1` or `base`") and the
    command's own help ("Target revision, e.g. -1 or base") give `-1`; Click reads it as an
    unknown option and the command exits 2 with "No such option: -1"."""
    url = scratch_database.set(drivername="postgresql").render_as_string(hide_password=False)
    assert _mainsail(tmp_path, "migrate", "upgrade", MAINSAIL_DATABASE_URL=url).returncode == 0
    down = _mainsail(tmp_path, "migrate", "downgrade", "-1", MAINSAIL_DATABASE_URL=url)
    assert "No such option" not in down.stderr, down.stderr
    assert down.returncode == 0, down.stderr
    (head,) = migrations.head_revisions()
    current = _mainsail(tmp_path, "migrate", "current", MAINSAIL_DATABASE_URL=url)
    assert current.returncode == 0
    assert not current.stdout.startswith(head), current.stdout


def test_the_embedded_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    """.env.example: MAINSAIL_DATA_DIR is "Where local state lives (embedded database,
    generated development signing key)". The signing key, documents and model cache follow
    DATA_DIR, but the embedded server's directory is a fixed `.mainsail/pg` relative to the
    working directory, so moving DATA_DIR leaves the database behind (in whatever directory
    the command happens to run from)."""
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    result = _mainsail(work, "migrate", "current", MAINSAIL_DATA_DIR=str(state))
    assert result.returncode == 0, result.stderr
    assert not (work / ".mainsail").exists(), "the embedded database went into the cwd"
    assert (state / "pg").is_dir() or any(state.glob("**/PG_VERSION"))
