"""``mainsail ingest`` at its edges: against a real service, and against a stand-in API that
answers the way proxies, rate limits and deletions make a real one answer."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from rich.console import Console

from mainsail import uploader
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


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"status": status, "code": "stub", "detail": detail},
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


def stub_api(behaviour: dict[str, Any]) -> FastAPI:
    """``behaviour``: ``post_refused`` (how many uploads to refuse first), ``post_status``
    (with which status: 429 by default), ``retry_after`` (its header: "1" by default),
    ``post_html`` (answer uploads with a 202 HTML page), ``get_bad`` (how many looks at a
    document get a proxy's 502 page first; ``True``: every one), ``get_status`` (answer looks
    at a document with this problem status), ``get_limited`` (how many looks at a document
    get ``limited_status``, 429 by default, with ``retry_after`` first), ``look_delay_s`` (how
    long a look at a document takes), ``document_status`` (a document's status: ``ready`` by
    default), ``job_limited`` (looks at a job get a 429 with ``retry_after``), ``embedded``
    (a job's ``progress.embedded``: 1 by default).

    ``seen``: ``posts``, ``post_times``, ``gets`` (looks at documents), ``jobs`` (at jobs),
    ``filenames``."""
    api = FastAPI()
    seen: dict[str, Any] = {"posts": 0, "post_times": [], "gets": 0, "jobs": 0, "filenames": []}
    behaviour["seen"] = seen

    @api.post("/documents")
    async def upload(request: Request) -> Any:
        body = await request.body()
        seen["posts"] += 1
        seen["post_times"].append(time.monotonic())
        if seen["posts"] <= behaviour.get("post_refused", 0):
            status = behaviour.get("post_status", 429)
            retry_after = behaviour.get("retry_after", "1")
            return _problem(status, "Too many requests.", {"Retry-After": retry_after})
        if behaviour.get("post_html"):
            return HTMLResponse("<html><body>Accepted</body></html>", status_code=202)
        name = re.search(rb'filename="([^"]*)"', body)
        seen["filenames"].append(name.group(1).decode() if name else None)
        return JSONResponse(_document(str(uuid.uuid4())), status_code=202)

    @api.get("/documents/{document_id}")
    async def read(document_id: str) -> Any:
        seen["gets"] += 1
        if delay := behaviour.get("look_delay_s"):
            await asyncio.sleep(delay)
        bad = behaviour.get("get_bad", 0)
        if bad is True or seen["gets"] <= bad:
            return HTMLResponse("<html><body>502 Bad Gateway</body></html>", status_code=502)
        if seen["gets"] <= behaviour.get("get_limited", 0):
            retry_after = behaviour.get("retry_after", "1")
            status = behaviour.get("limited_status", 429)
            return _problem(status, "Too many requests.", {"Retry-After": retry_after})
        if status := behaviour.get("get_status"):
            return _problem(status, "No such document.")
        return JSONResponse(_document(document_id, behaviour.get("document_status", "ready")))

    @api.get("/jobs/{job_id}")
    async def job(job_id: str) -> Any:
        seen["jobs"] += 1
        if behaviour.get("get_bad"):
            return PlainTextResponse("Bad Gateway", status_code=502)
        if behaviour.get("job_limited"):
            retry_after = behaviour.get("retry_after", "1")
            return _problem(429, "Too many requests.", {"Retry-After": retry_after})
        embedded = behaviour.get("embedded", 1)
        return JSONResponse({"id": job_id, "state": "running", "progress": {"embedded": embedded}})

    return api


@pytest.fixture
def stub() -> Iterator[tuple[str, dict[str, Any]]]:
    behaviour: dict[str, Any] = {}
    with running_server(stub_api(behaviour)) as base_url:
        yield base_url, behaviour


class Clock:
    """``time`` for the uploader: sleeping moves the clock on at once; requests take no
    time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if not seconds >= 0:  # as time.sleep: NaN or negative
            raise ValueError("sleep length must be non-negative")
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The uploader's ``time``, faked: waiting takes no real time."""
    fake = Clock()
    monkeypatch.setattr(uploader, "time", fake)
    return fake


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAINSAIL_API_KEY": "msk_stub", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mainsail", "ingest", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ingest_here(url: str, *paths: str, timeout_s: float = 10.0) -> list[uploader.Item]:
    """The command's upload and wait, in this process (so its ``time`` can be faked)."""
    files, missing = uploader.expand(paths)
    return missing + uploader.ingest(
        files,
        url=url,
        api_key="msk_stub",
        collection=None,
        chunk_size=None,
        chunk_overlap=None,
        wait=True,
        timeout_s=timeout_s,
        console=Console(file=io.StringIO()),
    )


# --- names: a same name in a collection is a new revision of one document -------------------


async def test_files_of_one_name_in_different_folders_stay_separate_documents(
    service: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """Files of one name in different folders (``alpha/README.md``, ``beta/README.md``) are
    two documents, named by their paths below the folder named, and listed so in the
    summary."""
    url, key = service
    for folder, words in (("alpha", "Anchors hold the hull."), ("beta", "Lanterns light decks.")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n\n{words}\n")
    done = run_ingest(str(tmp_path), "--url", url, "--no-wait", key=key)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "alpha/README.md" in done.stdout
    assert "beta/README.md" in done.stdout
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        listed = (await http.get("/documents")).json()
    assert listed["total"] == 2, [(d["filename"], d["revision"]) for d in listed["items"]]
    assert sorted(d["filename"] for d in listed["items"]) == ["alpha/README.md", "beta/README.md"]


async def test_files_named_or_matched_by_a_glob_keep_distinct_names(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A file named is uploaded under its name, wherever it was named from; files of one run
    that would share a name (``alpha/README.md beta/README.md``) under their paths as given;
    files a glob matched under their paths below the glob's fixed part."""
    url, behaviour = stub
    for folder in ("alpha", "beta"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n")
    named = cli("alpha/README.md", "./beta/README.md", "--url", url, "--no-wait", cwd=tmp_path)
    assert named.returncode == 0, named.stderr + named.stdout
    assert behaviour["seen"]["filenames"] == ["alpha/README.md", "beta/README.md"]
    assert "alpha/README.md" in named.stdout
    behaviour["seen"]["filenames"].clear()
    matched = cli("**/README.md", "--url", url, "--no-wait", cwd=tmp_path)
    assert matched.returncode == 0, matched.stderr + matched.stdout
    assert behaviour["seen"]["filenames"] == ["alpha/README.md", "beta/README.md"]
    behaviour["seen"]["filenames"].clear()
    below = cli(f"{tmp_path}/*/README.md", "--url", url, "--no-wait")
    assert below.returncode == 0, below.stderr + below.stdout
    assert behaviour["seen"]["filenames"] == ["alpha/README.md", "beta/README.md"]
    behaviour["seen"]["filenames"].clear()
    alone = cli(str(tmp_path / "alpha" / "README.md"), "--url", url, "--no-wait")
    assert alone.returncode == 0, alone.stderr + alone.stdout
    assert behaviour["seen"]["filenames"] == ["README.md"]  # as a browser would name it


def test_files_of_one_run_never_share_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file renamed by its path keeps no name another file of the run has: of ``a/x.md``,
    ``b/x.md`` (both ``x.md``, so named by their paths) and the folder ``c`` (whose
    ``c/a/x.md`` is ``a/x.md`` below it), the file below the folder is named by its path."""
    for folder in ("a", "b", "c/a"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.md").write_text(f"# {folder}\n")
    monkeypatch.chdir(tmp_path)
    files, missing = uploader.expand(["a/x.md", "b/x.md", "c"])
    assert not missing
    assert [item.name for item in files] == ["a/x.md", "b/x.md", "c/a/x.md"]


# --- paths that name no file ----------------------------------------------------------------


async def test_a_path_that_does_not_exist_is_reported_and_fails_the_command(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """A path that matches nothing is listed in the summary as ``missing`` and fails the
    command, though other paths matched; those are still uploaded."""
    url, behaviour = stub
    (tmp_path / "ok.txt").write_text("Fine words.")
    (tmp_path / "empty").mkdir()
    typo, empty = str(tmp_path / "typo.txt"), str(tmp_path / "empty")
    result = cli(str(tmp_path / "ok.txt"), typo, empty, "--url", url, "--no-wait")
    assert result.returncode == 1
    assert "3 files" in result.stdout
    assert "typo.txt" in result.stdout
    assert result.stdout.count("missing") == 2
    assert "no such file, or no files in that folder" in result.stdout
    assert behaviour["seen"]["posts"] == 1  # ok.txt was still uploaded


# --- bad answers while waiting --------------------------------------------------------------


async def test_a_bad_answer_while_waiting_is_reported_in_the_summary_not_a_traceback(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """An unreadable answer while waiting (a proxy's 502 page) is no traceback: the summary
    is printed, with the last answer, and the command fails."""
    url, behaviour = stub
    behaviour["get_bad"] = True
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--timeout", "1")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "1 files" in result.stdout  # the summary table
    assert result.returncode == 1
    assert "502" in result.stdout


def test_bad_answers_in_a_row_while_waiting_fail_that_file_with_a_reason(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock
) -> None:
    """Unreadable answers are looked at again; after ``MAX_BAD_POLLS`` in a row the file has
    failed, with the answer as its reason."""
    url, behaviour = stub
    behaviour["get_bad"] = True
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"), timeout_s=60)
    assert item.outcome == "failed"
    assert item.error is not None
    assert "502" in item.error
    assert behaviour["seen"]["gets"] == uploader.MAX_BAD_POLLS


def test_a_bad_answer_while_waiting_is_looked_at_again(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock
) -> None:
    """A few unreadable answers, then a good one: the file is ready."""
    url, behaviour = stub
    behaviour["get_bad"] = uploader.MAX_BAD_POLLS - 1
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"), timeout_s=60)
    assert (item.outcome, item.error) == ("ready", None)
    assert behaviour["seen"]["gets"] == uploader.MAX_BAD_POLLS


@pytest.mark.parametrize("status", [404, 401, 403])
async def test_a_document_gone_while_waiting_fails_at_once_not_at_the_timeout(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, status: int
) -> None:
    """A 404 while waiting (the document deleted meanwhile), or a 401/403 (the key revoked),
    fails that file at once with the problem's detail, instead of polling until
    ``--timeout``."""
    url, behaviour = stub
    behaviour["get_status"] = status
    (tmp_path / "ok.txt").write_text("Fine words.")
    started = time.monotonic()
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--timeout", "15")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "timeout" not in result.stdout, result.stdout
    assert f"{status}: No such document." in result.stdout
    assert behaviour["seen"]["gets"] == 1
    assert elapsed < 15


@pytest.mark.parametrize("status", [429, 503])
def test_a_rate_limited_look_while_waiting_pauses_for_retry_after_and_is_no_bad_answer(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock, status: int
) -> None:
    """A 429 (or 503) while waiting is the service asking for a pause, not an unreadable
    answer: the looks pause for ``Retry-After`` and the file is not failed, however many
    come in a row."""
    url, behaviour = stub
    behaviour["get_limited"], behaviour["limited_status"] = uploader.MAX_BAD_POLLS, status
    behaviour["retry_after"] = "7"
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"), timeout_s=600)
    assert (item.outcome, item.error) == ("ready", None)
    assert behaviour["seen"]["gets"] == uploader.MAX_BAD_POLLS + 1
    assert clock.now >= 7 * uploader.MAX_BAD_POLLS


def test_a_rate_limited_look_at_a_job_pauses_for_retry_after(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock
) -> None:
    """A 429 from a look at a job (the progress bar's chunks) pauses the looks for
    ``Retry-After`` too: a round every 7 s, not every ``POLL_INTERVAL_S``."""
    url, behaviour = stub
    behaviour["document_status"], behaviour["job_limited"] = "processing", True
    behaviour["retry_after"] = "7"
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"), timeout_s=20)
    assert item.outcome == "timeout"
    assert behaviour["seen"]["gets"] == 3  # at 0, 7 and 14 s


def test_waiting_on_many_files_stays_well_inside_the_default_rate_limit(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock
) -> None:
    """The pause after a round grows with the looks in it: waiting on 25 files makes at most
    ``MAX_LOOKS_PER_S`` looks a second (plus one round), half the service's default 600
    requests a minute, not a look at each every ``POLL_INTERVAL_S`` (780 a minute)."""
    url, behaviour = stub
    behaviour["document_status"] = "processing"
    for i in range(25):
        (tmp_path / f"f{i}.txt").write_text(f"Words {i}.")
    items = ingest_here(url, str(tmp_path), timeout_s=60)
    assert {item.outcome for item in items} == {"timeout"}
    looks = behaviour["seen"]["gets"] + behaviour["seen"]["jobs"]
    assert uploader.MAX_LOOKS_PER_S <= 5
    assert looks <= 60 * uploader.MAX_LOOKS_PER_S + 26, looks


def test_the_wait_ends_at_its_timeout_even_when_looks_are_slow(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """``--timeout`` is checked before each look and bounds each look's own timeout: four
    files whose looks take 1 s each, ``--timeout 0.5``, end after about 0.5 s, not after a
    round of 4 s."""
    url, behaviour = stub
    behaviour["document_status"], behaviour["look_delay_s"] = "processing", 1.0
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text(f"Words {i}.")
    started = time.monotonic()
    items = ingest_here(url, str(tmp_path), timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert {item.outcome for item in items} == {"timeout"}
    assert elapsed < 2.5, elapsed
    assert behaviour["seen"]["gets"] == 1


def test_a_look_reads_its_answer_once(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look at a document parses the answer's JSON once."""
    url, _ = stub
    parsed: list[httpx.Response] = []
    json = httpx.Response.json

    def counted(self: httpx.Response, **kwargs: Any) -> Any:
        parsed.append(self)
        return json(self, **kwargs)

    monkeypatch.setattr(httpx.Response, "json", counted)
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"))
    assert item.outcome == "ready"
    looks = [r for r in parsed if r.request.method == "GET"]
    assert len(looks) == 1, [str(r.request.url) for r in parsed]


@pytest.mark.parametrize("embedded", [None, "many", {"chunks": 3}])
def test_a_job_progress_that_is_no_number_counts_as_unknown(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock, embedded: object
) -> None:
    """A job's ``progress.embedded`` that is no number (null, a string) is read as 0 chunks
    embedded, not a traceback."""
    url, behaviour = stub
    behaviour["document_status"], behaviour["embedded"] = "processing", embedded
    (tmp_path / "ok.txt").write_text("Fine words.")
    [item] = ingest_here(url, str(tmp_path / "ok.txt"), timeout_s=5)
    assert item.outcome == "timeout"
    assert behaviour["seen"]["jobs"] >= 1


# --- uploads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_a_rate_limited_upload_is_sent_again_after_retry_after(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, status: int
) -> None:
    """A 429 (or 503) upload is sent again, whole, after ``Retry-After``, not refused."""
    url, behaviour = stub
    behaviour["post_refused"], behaviour["post_status"] = 1, status
    (tmp_path / "ok.txt").write_text("Fine words.")
    started = time.monotonic()
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--no-wait")
    assert result.returncode == 0, result.stdout
    assert "refused" not in result.stdout
    assert behaviour["seen"]["posts"] == 2
    assert behaviour["seen"]["filenames"] == ["ok.txt"]
    assert time.monotonic() - started >= 1  # Retry-After: 1


async def test_a_rate_limited_upload_is_refused_after_its_tries(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """An upload still refused after ``UPLOAD_TRIES`` tries is reported as refused."""
    url, behaviour = stub
    behaviour["post_refused"], behaviour["retry_after"] = 100, "0"
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), "--url", url, "--no-wait")
    assert result.returncode == 1
    assert "refused" in result.stdout
    assert "429: Too many requests." in result.stdout
    assert behaviour["seen"]["posts"] == uploader.UPLOAD_TRIES


async def test_an_upload_answered_with_a_page_not_a_document_is_refused(
    stub: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """An upload answered with something other than a document (a proxy's page) is refused
    in the summary, not a traceback."""
    url, behaviour = stub
    behaviour["post_html"] = True
    (tmp_path / "ok.txt").write_text("Fine words.")
    result = cli(str(tmp_path / "ok.txt"), "--url", url)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1
    assert "HTTP 202: not a document" in result.stdout


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("2.5", 2.5),
        ("-4", 0.0),
        ("600", 60.0),
        ("NaN", 1.0),
        ("inf", 1.0),
        ("soon", 1.0),
    ],
)
def test_retry_after_in_seconds_is_capped_and_nonsense_is_a_second(
    header: str, seconds: float
) -> None:
    """``Retry-After`` in seconds is waited for, between 0 and ``MAX_RETRY_AFTER_S``; what is
    no finite number or date (``NaN``, ``inf``, a word) is a second."""
    response = httpx.Response(429, headers={"Retry-After": header})
    assert uploader._retry_after(response) == seconds


@pytest.mark.parametrize(
    ("ahead_s", "low", "high"), [(30, 28.0, 30.0), (3600, 60.0, 60.0), (-60, 0.0, 0.0)]
)
def test_retry_after_as_an_http_date_is_waited_until_capped(
    ahead_s: int, low: float, high: float
) -> None:
    """``Retry-After`` as an HTTP date (RFC 9110) is waited until, at most
    ``MAX_RETRY_AFTER_S``; a date past is no wait."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=ahead_s), usegmt=True)
    response = httpx.Response(503, headers={"Retry-After": when})
    assert low <= uploader._retry_after(response) <= high


def test_an_upload_answered_with_retry_after_nan_is_sent_again_after_a_second(
    stub: tuple[str, dict[str, Any]], tmp_path: Path, clock: Clock
) -> None:
    """A 429 upload with ``Retry-After: NaN`` is sent again after a second, not a
    traceback."""
    url, behaviour = stub
    behaviour["post_refused"], behaviour["retry_after"] = 1, "NaN"
    (tmp_path / "ok.txt").write_text("Fine words.")
    files, _ = uploader.expand([str(tmp_path / "ok.txt")])
    with httpx.Client(base_url=url) as http:
        uploader._upload(http, files[0], {})
    assert (files[0].outcome, files[0].error) == ("uploaded", None)
    assert behaviour["seen"]["posts"] == 2
    assert clock.now == 1.0


LIMIT, WINDOW_S = 600, 60.0  # the service's default rate limit


def limited_api(fake: Clock, ready_after: int) -> tuple[FastAPI, dict[str, Any]]:
    """Uploads are taken; looks at documents and jobs are limited to LIMIT per WINDOW_S of
    the uploader's (fake) time, a moving window as the service's limiter. The first
    ``ready_after`` documents uploaded stay processing, the rest are ready."""
    api = FastAPI()
    seen: dict[str, Any] = {"order": [], "limited": 0, "looks": 0, "looked_at": set()}
    stamps: deque[float] = deque()

    def admitted() -> float | None:
        while stamps and stamps[0] <= fake.now - WINDOW_S:
            stamps.popleft()
        if len(stamps) >= LIMIT:
            return stamps[0] + WINDOW_S - fake.now
        stamps.append(fake.now)
        return None

    def limited(wait_s: float) -> JSONResponse:
        seen["limited"] += 1
        return JSONResponse(
            {"status": 429, "code": "rate_limited", "detail": "Rate limit exceeded"},
            status_code=429,
            headers={"Retry-After": str(max(1, int(wait_s + 0.999)))},
            media_type="application/problem+json",
        )

    @api.post("/documents")
    async def upload() -> Any:
        document_id = str(uuid.uuid4())
        seen["order"].append(document_id)
        return JSONResponse(
            {
                "id": document_id,
                "job_id": str(uuid.uuid4()),
                "status": "queued",
                "chunk_count": 0,
                "error": None,
            },
            status_code=202,
        )

    @api.get("/documents/{document_id}")
    async def read(document_id: str) -> Any:
        if (wait_s := admitted()) is not None:
            return limited(wait_s)
        seen["looks"] += 1
        seen["looked_at"].add(document_id)
        ready = seen["order"].index(document_id) >= ready_after
        return JSONResponse(
            {
                "id": document_id,
                "job_id": None,
                "status": "ready" if ready else "processing",
                "chunk_count": 1,
                "error": None,
            }
        )

    @api.get("/jobs/{job_id}")
    async def job(job_id: str) -> Any:
        if (wait_s := admitted()) is not None:
            return limited(wait_s)
        return JSONResponse({"id": job_id, "state": "running", "progress": {"embedded": 0}})

    return api, seen


def test_waiting_on_700_files_looks_at_every_file_inside_the_default_rate_limit(
    tmp_path: Path, clock: Clock
) -> None:
    """Waiting on more files than the service's rate limit allows a minute spaces its looks
    (at most 5 a second), so none is refused and every file is looked at: the last 100 of
    700, ready all along, are found ready."""
    api, seen = limited_api(clock, ready_after=600)
    for i in range(700):
        (tmp_path / f"f{i:03}.txt").write_text(f"Words {i}.")
    with running_server(api) as url:
        items = ingest_here(url, str(tmp_path), timeout_s=900)
    outcomes = [item.outcome for item in items]
    ready = outcomes.count("ready")
    assert (ready, seen["limited"]) == (100, 0), (
        f"{ready} ready, {outcomes.count('timeout')} timed out, {seen['limited']} looks "
        f"rate limited, {len(seen['looked_at'])} of 700 files ever looked at"
    )
