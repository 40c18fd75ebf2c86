"""Documents named and sniffed as their users mean them, and `mainsail ingest` summaries that
print any file name: a changed file whose bytes another document holds, blank collection
names, RTF behind a byte order mark, names that look like markup or are not UTF-8."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from mainsail.documents import repository
from mainsail.uploader import Item, summary
from tests.documents.conftest import Upload
from tests.fixtures.identity import Account


async def test_a_changed_file_whose_bytes_another_document_holds_is_a_revision_of_its_name(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    """a.txt and b.txt are two documents; a.txt is then edited so that its bytes equal
    b.txt's. The upload names a.txt: it revises a.txt's document (its old chunks do not
    stay searchable as a.txt), not answer with b.txt's document and leave a.txt stale."""
    a = await upload(alice, b"The first version of a.", "a.txt", collection="review")
    b = await upload(alice, b"The text of b.", "b.txt", collection="review")
    assert (a.status_code, b.status_code) == (202, 202)
    edited = await upload(alice, b"The text of b.", "a.txt", collection="review")
    assert edited.json()["id"] == a.json()["id"], (
        edited.status_code,
        edited.json()["filename"],
    )
    assert edited.status_code == 202
    assert edited.json()["revision"] == 2
    assert edited.json()["sha256"] == hashlib.sha256(b"The text of b.").hexdigest()
    listed = await client.get("/documents", params={"collection": "review"}, headers=alice.headers)
    by_name = {d["filename"]: d["sha256"] for d in listed.json()["items"]}
    assert by_name["a.txt"] == hashlib.sha256(b"The text of b.").hexdigest()


async def test_a_blank_collection_name_is_refused(
    client: httpx.AsyncClient, alice: Account, upload: Upload
) -> None:
    """ "" is refused, and so is "   ": a collection nobody could tell from an empty name."""
    inline = await client.post(
        "/documents", json={"text": "Some words.", "collection": "   "}, headers=alice.headers
    )
    assert inline.status_code == 422, inline.json().get("collection")
    form = await upload(alice, b"Other words.", "w.txt", collection="   ")
    assert form.status_code == 422, form.json().get("collection")


async def test_rtf_behind_a_byte_order_mark_is_refused_like_any_rtf(
    alice: Account, upload: Upload
) -> None:
    """`{\\rtf1` is a 415, and so is the same file saved with a UTF-8 BOM (or a leading
    newline): not plain text whose control words would be ingested as words."""
    rtf = b"{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}}\\f0\\fs24 Hello sailors.\\par}"
    plain = await upload(alice, rtf, "letter.rtf")
    assert plain.status_code == 415
    with_bom = await upload(alice, b"\xef\xbb\xbf" + rtf, "letter2.rtf")
    assert with_bom.status_code == 415, with_bom.json().get("content_type")


def _rendered(items: list[Item]) -> str:
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(summary(items, 1.0))
    return out.getvalue()


def test_the_summary_shows_names_in_brackets_as_they_are() -> None:
    """Names (and errors) are shown as written, not read as Rich markup ("report [draft].txt"
    showed as "report .txt")."""
    shown = _rendered([Item(Path("report [draft].txt"))])
    assert "report [draft].txt" in shown


def test_the_summary_does_not_crash_on_a_name_that_reads_as_a_closing_tag() -> None:
    """A file `old].md` in a folder `notes[` is named "notes[/old].md": the summary prints it
    (it raised MarkupError after every file was uploaded: no summary, a traceback)."""
    shown = _rendered([Item(Path("notes[/old].md"))])
    assert "notes[/old].md" in shown


def test_a_file_name_that_is_not_utf8_is_reported_not_a_traceback(tmp_path: Path) -> None:
    """A Latin-1 file name (bytes not UTF-8, as in old archives) is sent and shown with
    U+FFFD for those bytes (httpx raised UnicodeEncodeError: a traceback, the files after it
    never sent, no summary)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"Latin-1 named notes.")
    (folder / "good.txt").write_bytes(b"Plain notes.")
    env = {**os.environ, "MAINSAIL_API_KEY": "k", "COLUMNS": "200"}
    done = subprocess.run(
        # Nothing listens on port 9: every upload is refused, which is fine here.
        [sys.executable, "-m", "mainsail", "ingest", str(folder), "--url", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    stderr = done.stderr.decode("utf-8", "replace")
    stdout = done.stdout.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr[-600:]
    assert done.returncode == 1
    assert "2 files" in stdout
    assert "good.txt" in stdout


async def test_two_files_swapping_their_bytes_at_once_both_become_revisions(
    client: httpx.AsyncClient, alice: Account, upload: Upload, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a.txt holds X, b.txt holds Y; the owner swaps them and uploads both at once (the
    uploader sends files concurrently). Each upload locks the *other* name's row FOR KEY
    SHARE in find_same_bytes, then wants its own name's row: FOR UPDATE there was a
    deadlock (one upload a 503); FOR NO KEY UPDATE, both revise their documents."""
    a = await upload(alice, b"The bytes X of the first file.", "a.txt", collection="swap")
    b = await upload(alice, b"The bytes Y of the second file.", "b.txt", collection="swap")
    assert (a.status_code, b.status_code) == (202, 202)

    original = repository.find_by_name
    barrier = asyncio.Barrier(2)

    async def in_step(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("lock"):  # both have run find_same_bytes (a fix may not get here)
            with contextlib.suppress(TimeoutError, asyncio.BrokenBarrierError):
                await asyncio.wait_for(barrier.wait(), 3)
        return await original(*args, **kwargs)

    monkeypatch.setattr(repository, "find_by_name", in_step)
    answers = await asyncio.wait_for(
        asyncio.gather(
            upload(alice, b"The bytes Y of the second file.", "a.txt", collection="swap"),
            upload(alice, b"The bytes X of the first file.", "b.txt", collection="swap"),
            return_exceptions=True,
        ),
        30,
    )
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    assert statuses == [202, 202]
    assert [r.json()["id"] for r in answers] == [a.json()["id"], b.json()["id"]]
