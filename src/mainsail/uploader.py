"""``mainsail ingest``: upload files, folders or globs to a running Mainsail through its API,
with a progress bar (files, chunks, chunks/s) and a summary table."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
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


@dataclass
class Item:
    path: Path
    outcome: str = "pending"  # uploaded | existing | refused | ready | failed | timeout
    document_id: str | None = None
    job_id: str | None = None
    chunks: int = 0
    error: str | None = None


def expand(paths: Iterable[str]) -> list[Path]:
    """Files named, files under folders (recursively, hidden ones skipped), glob matches."""
    found: dict[Path, None] = {}
    for raw in paths:
        matches = [Path(p) for p in glob.glob(raw, recursive=True)] or [Path(raw)]
        for match in matches:
            for path in _files(match):
                found[path.resolve()] = None
    return list(found)


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path).parts
            if child.is_file() and not any(part.startswith(".") for part in relative):
                yield child


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    detail = body.get("detail") or body.get("title") if isinstance(body, dict) else None
    return f"{response.status_code}: {detail or 'error'}"


def ingest(
    paths: list[Path],
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
    items = [Item(path) for path in paths]
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
            try:
                with item.path.open("rb") as handle:
                    response = http.post(
                        "/documents", files={"file": (item.path.name, handle)}, data=fields
                    )
            except (OSError, httpx.HTTPError) as exc:
                item.outcome, item.error = "refused", f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in (200, 202):
                    body = response.json()
                    item.outcome = "existing" if response.status_code == 200 else "uploaded"
                    item.document_id, item.job_id = body["id"], body.get("job_id")
                    item.chunks = body.get("chunk_count", 0)
                    if body.get("status") in FINAL:
                        item.outcome, item.error = body["status"], body.get("error")
                else:
                    item.outcome, item.error = "refused", _problem(response)
            progress.advance(uploading)
        if not wait:
            return items
        pending = [i for i in items if i.document_id and i.outcome not in FINAL]
        done_before = sum(i.chunks for i in items if i.outcome == "ready")
        processing = progress.add_task(
            "ingesting", total=len(pending), chunks=done_before, rate=0.0
        )
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            live = 0
            for item in list(pending):
                document = http.get(f"/documents/{item.document_id}").json()
                if document.get("status") in FINAL:
                    item.outcome, item.error = document["status"], document.get("error")
                    item.chunks = document.get("chunk_count", 0)
                    pending.remove(item)
                    progress.advance(processing)
                elif item.job_id:
                    job = http.get(f"/jobs/{item.job_id}").json()
                    live += int(job.get("progress", {}).get("embedded", 0))
            finished = sum(i.chunks for i in items if i.outcome == "ready")
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                processing, chunks=finished + live, rate=(finished + live - done_before) / elapsed
            )
            if pending:
                time.sleep(0.5)
        for item in pending:
            item.outcome, item.error = "timeout", f"not finished within {timeout_s:.0f} s"
    return items


def summary(items: list[Item], elapsed_s: float) -> Table:
    table = Table(title=f"{len(items)} files in {elapsed_s:.1f} s")
    for column in ("file", "outcome", "chunks", "document", "error"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            str(item.path),
            item.outcome,
            str(item.chunks),
            item.document_id or "",
            item.error or "",
        )
    return table
