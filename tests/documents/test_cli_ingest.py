"""``mainsail ingest`` against a running service: a folder and a glob are uploaded, waited
for, and summarised; a refused file makes the exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.settings import Settings
from tests.documents.conftest import FIXTURES, essay
from tests.fixtures.app import truncate_all
from tests.fixtures.servers import running_server
from tests.openai_compat.conftest import open_account


@pytest.fixture
async def service(settings: Settings, database_url: URL) -> AsyncIterator[tuple[str, str]]:
    with running_server(create_app(settings)) as base_url:
        key, _ = await open_account(base_url, settings)
        yield base_url, key
    await truncate_all(database_url)


def run_ingest(*args: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAINSAIL_API_KEY": key, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mainsail", "ingest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_a_folder_is_uploaded_waited_for_and_summarised(
    service: tuple[str, str], tmp_path: Path
) -> None:
    url, key = service
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text(essay(3))
    (folder / "nested" / "b.md").write_text("# B\n\n" + essay(2, seed=1))
    (folder / ".hidden.txt").write_text("skipped")
    (folder / "sample.pdf").write_bytes((FIXTURES / "sample.pdf").read_bytes())
    done = run_ingest(str(folder), "--url", url, "--collection", "cli", key=key)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "3 files" in done.stdout
    assert done.stdout.count("ready") == 3
    assert ".hidden" not in done.stdout
    again = run_ingest(str(folder / "*.txt"), "--url", url, "--collection", "cli", key=key)
    assert again.returncode == 0
    assert "1 files" in again.stdout  # the glob; the same bytes: the existing document
    assert "ready" in again.stdout


async def test_refusals_are_reported_and_fail_the_command(
    service: tuple[str, str], tmp_path: Path
) -> None:
    url, key = service
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = run_ingest(str(tmp_path), "--url", url, key=key)
    assert result.returncode == 1
    assert "refused" in result.stdout
    assert "415" in result.stdout
    no_key = run_ingest(str(tmp_path), "--url", url, key="")
    assert no_key.returncode == 2
    assert "API key" in no_key.stderr
    nothing = run_ingest(str(tmp_path / "missing"), "--url", url, key=key)
    assert nothing.returncode == 2
