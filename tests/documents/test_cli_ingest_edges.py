"""``mainsail ingest`` at its edges: against a real service, and against a stand-in API that
answers the way proxies, rate limits and deletions make a real one answer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from tests.documents.test_cli_ingest import run_ingest, service  # noqa: F401 - a fixture
from tests.fixtures.servers import running_server

pytestmark = pytest.mark.slow


# --- a stub of the document API ------------------------------------------------------------


def _document(document_id: str, status: str = "queued") -> dict[str, Any]:
    return {
        "id": document_id,
        "job_id": str(uuid.uuid4()),
        "status": status,
        "chunk_count": 0,
        "error": None,
    }


def stub_api(behaviour: dict[str, Any]) -> FastAPI:
    """``behaviour``: ``post_429`` (how many uploads to refuse with 429 + Retry-After first),
    ``get_document`` ("html_502" or "404")."""
    api = FastAPI()
    seen: dict[str, Any] = {"posts": 0, "gets": 0}
    behaviour["seen"] = seen

    @api.post("/documents")
    async def upload(request: Request) -> JSONResponse:
        await request.body()
        seen["posts"] += 1
        if seen["posts"] <= behaviour.get("post_429", 0):
            return JSONResponse(
                {"status": 429, "code": "rate_limited", "detail": "Too many requests."},
                status_code=429,
                headers={"Retry-After": "1"},
                media_type="application/problem+json",
            )
        return JSONResponse(_document(str(uuid.uuid4())), status_code=202)

    @api.get("/documents/{document_id}")
    async def read(document_id: str) -> Any:
        seen["gets"] += 1
        if behaviour.get("get_document") == "html_502":
            return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)
        if behaviour.get("get_document") == "404":
            return JSONResponse(
                {"status": 404, "code": "not_found", "detail": "No such document."},
                status_code=404,
                media_type="application/problem+json",
            )
        return JSONResponse(_document(document_id, "ready"))

    @api.get("/jobs/{job_id}")
    async def job(job_id: str) -> JSONResponse:
        return JSONResponse({"id": job_id, "state": "running", "progress": {}})

    return api


@pytest.fixture
def stub() -> Iterator[tuple[str, dict[str, Any]]]:
    behaviour: dict[str, Any] = {}
    with running_server(stub_api(behaviour)) as base_url:
        yield base_url, behaviour


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAINSAIL_API_KEY": "msk_stub", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mainsail", "ingest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- against the real service ---------------------------------------------------------------


async def test_files_of_one_name_in_different_folders_stay_separate_documents(
    service: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Files of one name in different folders (``alpha/README.md``, ``beta/README.md``) are
    two documents, named by their paths below the folder (under the bare name the second
    was a new revision of the first, which then could not be found)."""
    url, key = service
    for folder, words in (("alpha", "Anchors hold the hull."), ("beta", "Lanterns light decks.")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n\n{words}\n")
    done = run_ingest(str(tmp_path), "--url", url, "--no-wait", key=key)
    assert done.returncode == 0, done.stderr + done.stdout
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        listed = (await http.get("/documents")).json()
    assert listed["total"] == 2, [(d["filename"], d["revision"]) for d in listed["items"]]
    assert sorted(d["filename"] for d in listed["items"]) == ["alpha/README.md", "beta/README.md"]


async def test_a_path_that_does_not_exist_is_reported_and_fails_the_command(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A path that matches nothing is listed in the summary and fails the command, though
    other paths matched (it was dropped without a word)."""
    url, behaviour = stub
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), str(tmp_path / "typo.txt"), "--url", url, "--no-wait")
    assert result.returncode == 1
    assert "typo.txt" in result.stdout
    assert "missing" in result.stdout
    assert behaviour["seen"]["posts"] == 1  # ok.txt was still uploaded


async def test_a_bad_answer_while_waiting_is_reported_not_a_traceback(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """An unreadable answer while waiting (a proxy's 502 page) is looked at again and then
    reported in the summary, not a traceback."""
    url, behaviour = stub
    behaviour["get_document"] = "html_502"
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--timeout", "10")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "1 files" in result.stdout  # the summary table
    assert result.returncode == 1
    assert "502" in result.stdout


async def test_a_document_deleted_while_waiting_is_not_waited_for_until_the_timeout(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A 404 while waiting (the document deleted meanwhile; a 401 once the key is revoked)
    fails that file at once, instead of polling until ``--timeout``."""
    url, behaviour = stub
    behaviour["get_document"] = "404"
    (tmp_path / "ok.txt").write_text("Fine words.")
    started = time.monotonic()
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--timeout", "15")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "timeout" not in result.stdout, result.stdout
    assert "No such document" in result.stdout
    assert elapsed < 15


async def test_a_rate_limited_upload_is_sent_again_after_retry_after(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A 429 (or 503) upload is sent again after ``Retry-After``, not refused at once."""
    url, behaviour = stub
    behaviour["post_429"] = 1
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--no-wait")
    assert result.returncode == 0, result.stdout
    assert "refused" not in result.stdout
    assert behaviour["seen"]["posts"] == 2
