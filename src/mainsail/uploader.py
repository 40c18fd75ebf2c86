"""``mainsail ingest``: upload files, folders or globs to a running Mainsail through its API,
with a progress bar (files, chunks, chunks/s) and a summary table."""

from __future__ import annotations

import glob
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

FINAL = ("ready", "failed")
# Answers that say "come back later": the upload is sent again after Retry-After; while
# waiting, the looks pause for it (and the answer is not an unreadable one).
RETRIED = (429, 503)
UPLOAD_TRIES = 5
MAX_RETRY_AFTER_S = 60.0
# While waiting, each round looks at every pending document and at one job, its requests
# spaced 1 / MAX_LOOKS_PER_S apart, so waiting on any number of files makes at most 5
# requests a second (300 a minute, half the service's default rate limit of 600 requests a
# minute); a round starts at most every POLL_INTERVAL_S.
POLL_INTERVAL_S = 2.0
MAX_LOOKS_PER_S = 5.0
# The longest a look may take (no look runs past the deadline of ``--timeout`` either).
LOOK_TIMEOUT_S = 60.0
# Answers while waiting that will not change (deleted, the key revoked): the file failed.
GONE = (401, 403, 404)
# Unreadable answers in a row (a proxy's error page, a dropped connection) before a file is
# given up on; each one is tried again at the next look.
MAX_BAD_POLLS = 5


@dataclass
class Item:
    path: Path
    # The document's filename (``expand``).
    name: str = ""
    outcome: str = "pending"  # uploaded | existing | refused | missing | ready | failed | timeout
    document_id: str | None = None
    job_id: str | None = None
    chunks: int = 0
    error: str | None = None
    bad_polls: int = 0
    last_problem: str | None = None  # the last unreadable answer while waiting

    def __post_init__(self) -> None:
        self.name = self.name or self.path.as_posix()


def expand(paths: Iterable[str]) -> tuple[list[Item], list[Item]]:
    """(files to upload, arguments that named none). Files named, files under folders
    (recursively, hidden ones skipped), glob matches; each file once.

    The name each is uploaded under (a same name in a collection is a new revision of one
    document): a file named, its name (as a browser uploads it, so naming it again from
    anywhere updates the same document); a file under a folder named, its path below that
    folder (``alpha/README.md``, ``beta/README.md``); a file a glob matched, its path below
    the glob's fixed part (``docs/**/*.md`` gives ``a/README.md``). Files of one run that
    would share a name are named by their paths as given instead, and should such a name
    still be another file's, by their absolute paths: no two files of a run share a name."""
    found: dict[Path, Item] = {}
    missing: list[Item] = []
    for raw in paths:
        if raw and Path(raw).exists():  # a name, even one with glob characters in it
            root, matches = Path(raw), [Path(raw)]
        else:
            root = _fixed_part(raw)
            matches = [Path(p) for p in sorted(glob.glob(raw, recursive=True))]
        named = False
        for match in matches:
            for path, name in _files(match, root):
                named = True
                found.setdefault(path.resolve(), Item(path, _readable(name)))
        if not named:
            missing.append(
                Item(
                    Path(raw),
                    _readable(raw),
                    outcome="missing",
                    error="no such file, or no files in that folder",
                )
            )
    items = list(found.values())
    _name_apart(items)
    return items, missing


def _name_apart(items: list[Item]) -> None:
    """Renames files that share a name until none do. Of the files sharing one, those named
    least specifically are renamed: a name of its own (or below a folder or glob) becomes the
    path as given, which becomes the absolute path (distinct for distinct files)."""
    renamed = [0] * len(items)  # 0: as expanded, 1: the path as given, 2: the absolute path
    while True:
        sharing: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            sharing.setdefault(item.name, []).append(index)
        groups = [group for group in sharing.values() if len(group) > 1]
        if not groups:
            return
        for group in groups:  # never all absolute paths, so some are renamed: it ends
            least = min(renamed[index] for index in group)
            for index in group:
                if renamed[index] == least:
                    renamed[index] += 1
                    path = items[index].path
                    name = (path if least == 0 else path.resolve()).as_posix()
                    items[index].name = _readable(name)


def _readable(name: str) -> str:
    """A file name as text: bytes of the file system's that are not UTF-8 (an old Latin-1
    name, held as lone surrogates) are written as escapes (``caf\\xe9.txt``), so the name
    can be sent and printed, and two names that differ only there stay apart."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fixed_part(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading parts without wildcards."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def _files(path: Path, root: Path) -> Iterator[tuple[Path, str]]:
    """The files at ``path`` (named, or matched by a glob searching ``root``), each with the
    name it is uploaded under."""
    if path.is_file():
        yield path, path.name if path == root else _below(path, root)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path)
            if child.is_file() and not any(part.startswith(".") for part in relative.parts):
                yield child, _below(child, root)


def _below(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # not under it (a pattern with ".."): the path as matched
        return path.as_posix()


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
    return f"{response.status_code}: {detail or 'error'}"


def ingest(
    items: list[Item],
    *,
    url: str,
    api_key: str,
    collection: str | None,
    chunk_size: int | None,
    chunk_overlap: int | None,
    wait: bool,
    timeout_s: float,
    console: Console,
) -> list[Item]:
    fields: dict[str, str] = {}
    if collection:
        fields["collection"] = collection
    if chunk_size is not None:
        fields["chunk_size"] = str(chunk_size)
    if chunk_overlap is not None:
        fields["chunk_overlap"] = str(chunk_overlap)
    headers = {"Authorization": f"Bearer {api_key}"}
    started = time.monotonic()
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks, {task.fields[rate]:.1f} chunks/s"),
        TimeElapsedColumn(),
    )
    with (
        httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(60.0, connect=5.0)
        ) as http,
        Progress(*columns, console=console, transient=False) as progress,
    ):
        uploading = progress.add_task("uploading", total=len(items), chunks=0, rate=0.0)
        for item in items:
            _upload(http, item, fields)
            progress.advance(uploading)
        if not wait:
            return items
        pending = [i for i in items if i.document_id and i.outcome not in FINAL]
        done_before = sum(i.chunks for i in items if i.outcome == "ready")
        processing = progress.add_task(
            "ingesting", total=len(pending), chunks=done_before, rate=0.0
        )
        deadline = time.monotonic() + timeout_s
        live = 0
        pace = _Pace(MAX_LOOKS_PER_S)

        def show() -> None:
            finished = sum(i.chunks for i in items if i.outcome == "ready")
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                processing, chunks=finished + live, rate=(finished + live - done_before) / elapsed
            )

        while pending and time.monotonic() < deadline:
            round_started, later = time.monotonic(), 0.0
            looking: Item | None = None
            try:
                for looking in list(pending):
                    if not pace.wait(deadline):
                        break
                    if _look(http, looking, deadline):
                        pending.remove(looking)
                        progress.advance(processing)
                        show()
                looking = None
                # The chunks embedded so far of the file being ingested (one more request).
                if pending and pace.wait(deadline):
                    live = _embedded(http, pending[0], deadline)
            except _Later as answer:  # the rest of this round after the pause it asks for
                later = answer.seconds
                if looking is not None and looking in pending:  # next, from the file it cut at
                    cut = pending.index(looking)
                    pending[:] = pending[cut:] + pending[:cut]
            show()
            if pending:
                pause = max(POLL_INTERVAL_S - (time.monotonic() - round_started), later, 0.0)
                time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        for item in pending:
            item.outcome, item.error = "timeout", f"not finished within {timeout_s:.0f} s"
            if item.last_problem:
                item.error += f" (last answer: {item.last_problem})"
    return items


def _upload(http: httpx.Client, item: Item, fields: dict[str, str]) -> None:
    """One file, sent again after ``Retry-After`` while the service answers 429 or 503."""
    for attempt in range(1, UPLOAD_TRIES + 1):
        try:
            with item.path.open("rb") as handle:
                response = http.post("/documents", files={"file": (item.name, handle)}, data=fields)
        except (OSError, httpx.HTTPError) as exc:
            item.outcome, item.error = "refused", f"{type(exc).__name__}: {exc}"
            return
        if response.status_code in RETRIED and attempt < UPLOAD_TRIES:
            time.sleep(_retry_after(response))
            continue
        break
    if response.status_code not in (200, 202):
        item.outcome, item.error = "refused", _problem(response)
        return
    try:
        body = response.json()
        document_id = body["id"]
    except (ValueError, TypeError, KeyError):  # a proxy's page with a 200: not a document
        item.outcome, item.error = "refused", f"HTTP {response.status_code}: not a document"
        return
    item.outcome = "existing" if response.status_code == 200 else "uploaded"
    item.document_id, item.job_id = document_id, body.get("job_id")
    item.chunks = body.get("chunk_count", 0)
    if body.get("status") in FINAL:
        item.outcome, item.error = body["status"], body.get("error")


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait: ``Retry-After`` in seconds or as an HTTP date, at most
    ``MAX_RETRY_AFTER_S``; a second when it is missing or unreadable."""
    value = response.headers.get("retry-after", "1").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):  # nonsense
            seconds = 1.0
        else:
            if when.tzinfo is None:  # "-0000": UTC
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):  # "NaN", "inf"
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _Pace:
    """Requests spaced at least ``1 / per_s`` seconds apart, whatever the number of files."""

    def __init__(self, per_s: float) -> None:
        self.gap = 1.0 / per_s
        self.next = 0.0

    def wait(self, deadline: float) -> bool:
        """Waits for the next request's turn; False when that would be past ``deadline``."""
        now = time.monotonic()
        if self.next >= deadline or now >= deadline:
            return False
        if self.next > now:
            time.sleep(self.next - now)
        self.next = time.monotonic() + self.gap
        return True


class _Later(Exception):
    """A look answered 429 or 503: the service asks for a pause of ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _look_timeout(deadline: float) -> httpx.Timeout:
    """A look's timeout: ``LOOK_TIMEOUT_S``, or less so it ends by ``deadline``."""
    remaining = max(deadline - time.monotonic(), 0.001)
    return httpx.Timeout(min(LOOK_TIMEOUT_S, remaining), connect=min(5.0, remaining))


def _look(http: httpx.Client, item: Item, deadline: float) -> bool:
    """Whether the document is done with (ready, failed, or gone); raises ``_Later`` when the
    service asks for a pause (the look is not counted as unreadable)."""
    document: object = None
    try:
        response = http.get(f"/documents/{item.document_id}", timeout=_look_timeout(deadline))
    except httpx.TimeoutException as exc:
        problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:  # cut short by --timeout: no answer, not a bad one
            item.last_problem = problem
            return False
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    else:
        if response.status_code in RETRIED:
            item.last_problem = _problem(response)
            raise _Later(_retry_after(response))
        if response.status_code in GONE:
            item.outcome, item.error = "failed", _problem(response)
            return True
        if not response.is_success:
            problem = _problem(response)
        else:
            try:
                document = response.json()
            except ValueError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                problem = f"HTTP {response.status_code}: not a document"
    if not isinstance(document, dict):  # an error page, a dropped connection: look again
        item.bad_polls, item.last_problem = item.bad_polls + 1, problem
        if item.bad_polls >= MAX_BAD_POLLS:
            item.outcome, item.error = "failed", f"no answer while waiting ({problem})"
            return True
        return False
    item.bad_polls, item.last_problem = 0, None
    if document.get("status") not in FINAL:
        return False
    item.outcome, item.error = document["status"], document.get("error")
    item.chunks = document.get("chunk_count", 0)
    return True


def _embedded(http: httpx.Client, item: Item, deadline: float) -> int:
    """The chunks of the item's job embedded so far (0 when unknown); raises ``_Later`` when
    the service asks for a pause."""
    if not item.job_id:
        return 0
    try:
        response = http.get(f"/jobs/{item.job_id}", timeout=_look_timeout(deadline))
        if response.status_code in RETRIED:
            raise _Later(_retry_after(response))
        job = response.json()
    except (httpx.HTTPError, ValueError):
        return 0
    progress = job.get("progress") if isinstance(job, dict) else None
    embedded = progress.get("embedded") if isinstance(progress, dict) else None
    if isinstance(embedded, bool):
        return 0
    if isinstance(embedded, int):
        return embedded
    if isinstance(embedded, float) and math.isfinite(embedded):
        return int(embedded)
    return 0  # missing, null, a string: unknown


def summary(items: list[Item], elapsed_s: float) -> Table:
    table = Table(title=f"{len(items)} files in {elapsed_s:.1f} s")
    for column in ("file", "outcome", "chunks", "document", "error"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(  # text as it is: a name like "notes[/old].md" is no markup
            escape(item.name),
            item.outcome,
            str(item.chunks),
            item.document_id or "",
            escape(item.error or ""),
        )
    return table
