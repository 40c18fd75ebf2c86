"""Denial of service through crafted input: regular expressions that backtrack
catastrophically and loops that grow quadratically, in sniffing, parsing and citations.

Each test runs the work in a child process killed at a generous bound, so a blow-up fails the
test in bounded time instead of hanging the suite. Every input here took the code at
least ten times the bound before its fix (figures in each docstring, on a 2-core machine); a linear
implementation finishes it in well under a second.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mainsail.documents.parsing import LimitExceeded, ParseLimits
from mainsail.documents.parsing.docx import check_entry_count
from tests.documents.fixtures.make_fixtures import pdf_bytes

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 15.0


def _finishes(code: str, *, within: float = BOUND_S) -> str:
    """Runs ``code`` in a fresh interpreter; fails the test when it is still running after
    ``within`` seconds (the child is killed)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=within,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {within:.0f} s (killed)")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _parses(path: Path, content_type: str, *, within: float = BOUND_S) -> str:
    return _finishes(
        f"""
        from pathlib import Path
        from mainsail.documents.parsing import parse
        print(len(list(parse(Path({str(path)!r}), {content_type!r}))))
        """,
        within=within,
    )


# --- sniffing (runs inside the upload request, on the event loop) --------------------------


def test_sniffing_a_text_upload_of_blank_lines_after_a_heading_is_not_cubic(
    tmp_path: Path,
) -> None:
    """sniffing.py:72, the "table delimiter row" sign ``^\\s*\\|?\\s*:?-{3,}...`` with
    MULTILINE: ``\\s`` crosses newlines, so from every line start the two ``\\s*`` split the
    rest of the blank lines every way: O(n^3) in the head. A text whose heading is not its first
    line makes ``_looks_like_markdown`` try the signs; measured: 1,000 blank lines 2.9 s, 2,000
    29 s, 4,000 207 s; the 8 KiB head sniffed here is ~30 minutes. ``sniff_file`` is called
    synchronously by ``service.create`` inside the async upload route: one 8 KiB upload
    freezes the whole server."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"x\n# h\n" + b"\n" * 8186)
    out = _finishes(
        f"""
        from pathlib import Path
        from mainsail.documents.parsing import sniff_file
        print(sniff_file(Path({str(path)!r}), "notes.txt"))
        """
    )
    assert out.strip() in ("text/plain", "text/markdown")


# --- Markdown -------------------------------------------------------------------------------


def test_markdown_heading_line_with_a_long_run_of_spaces_parses_in_linear_time(
    tmp_path: Path,
) -> None:
    """markdown.py:19 ``_ATX``: the lazy ``(.*?)`` tries every end, and at each one inside a
    run of spaces ``(?:[ \\t]+#+)?[ \\t]*`` scans (and backtracks over) the rest of the run:
    O(n^2) per heading line. Measured: 2,000 spaces 0.045 s, 4,000 0.12 s, 8,000 0.58 s; a
    99,000-space line (the block limit is 100,000) ~90 s, and this file has three."""
    path = tmp_path / "doc.md"
    path.write_text(("# a" + " " * 99_000 + "b\n") * 3, encoding="utf-8")
    assert int(_parses(path, "text/markdown")) >= 3


def test_markdown_table_check_of_a_line_indented_by_many_spaces_is_linear(
    tmp_path: Path,
) -> None:
    """markdown.py:26 ``_TABLE_DELIMITER`` starts ``[ \\t]*\\|?[ \\t]*``: without a pipe the two
    runs split the indentation every way before ``-`` fails: O(n^2). ``_is_table`` runs it on
    the second line of any paragraph whose first line holds a ``|``. Measured: 2,000 spaces
    0.04 s, 4,000 0.14 s, 8,000 0.57 s; the 99,000 here ~90 s."""
    path = tmp_path / "doc.md"
    path.write_text("a | b\n" + " " * 99_000 + "x\n", encoding="utf-8")
    assert int(_parses(path, "text/markdown")) >= 1


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_paragraph_with_a_hyphenated_line_end_and_long_words_is_linear(
    tmp_path: Path,
) -> None:
    """pdf.py:63 ``_HYPHENATED`` ``(\\w+)-\\n(\\w+)`` is searched from every position of a
    paragraph holding "-\\n"; inside a run of n word characters each start scans to its end and
    backtracks: O(n^2). Measured on 2-line pages (``["a"*n + " z-", "y " + "b"*n]``, a 1.8 KB
    PDF at n=40,000): n=10,000 0.99 s, 20,000 3.8 s, 40,000 16 s, against 0.18 s for the same
    page ending "z." instead of "z-". Two pages at n=99,000 here: ~200 s."""
    n = 99_000
    path = tmp_path / "doc.pdf"
    path.write_bytes(pdf_bytes([["a" * n + " z-", "y " + "b" * n]] * 2))
    assert int(_parses(path, "application/pdf")) >= 2


# --- HTML -----------------------------------------------------------------------------------


def test_html_hidden_section_with_many_unclosed_elements_is_linear(tmp_path: Path) -> None:
    """htmldoc.py:225-228 and 249-251: inside a hidden element every start tag is pushed on
    ``self.skipping`` (a list, unbounded unlike ``open``) after a ``tag in self.skipping``
    scan; end tags scan it and copy it reversed (``self.skipping[::-1].index``): O(n^2) in the
    elements opened. Measured (``<div hidden>`` then n distinct unclosed tags): n=10,000
    0.61 s, 20,000 2.1 s, 40,000 8.2 s; the 200,000 here (1.7 MB) ~200 s. ``<svg>`` nested n
    deep then n stray ``</g>`` is the same: 600 KB 16 s."""
    path = tmp_path / "page.html"
    tags = b"".join(b"<x%d>" % i for i in range(200_000))
    path.write_bytes(b"<html><body><p>hi</p><div hidden>" + tags + b"<p>end</p>")
    assert int(_parses(path, "text/html")) >= 1


def test_html_unfinished_doctype_is_not_rescanned_on_every_read(tmp_path: Path) -> None:
    """htmldoc.py:191-193 ``parse_html_declaration``: while a ``<!DOCTYPE`` has no ``>`` yet,
    ``_outside_quotes`` walks (in Python, character by character) everything after it on every
    64 KiB piece fed: O(n^2 / piece). Measured: 1 MiB 0.67 s, 2 MiB 2.5 s, 4 MiB 8.5 s; the
    8,000,000 bytes here (under max_markup_chars) 27.7 s, against 0.26 s once the declaration
    returns -1 as soon as no ``>`` follows (and 0.17 s for a 4 MiB unclosed comment)."""
    path = tmp_path / "page.html"
    path.write_bytes(b"<!DOCTYPE html " + b"a" * 8_000_000)
    _parses(path, "text/html", within=8.0)


# --- DOCX -----------------------------------------------------------------------------------


def test_docx_entry_count_guard_is_not_fooled_by_the_end_record(tmp_path: Path) -> None:
    """docx.py:90 ``check_entry_count`` trusts the end record's entry count ("before zipfile
    lists every entry in memory"), but zipfile reads the central directory by its size and
    ignores that count. With the count set to 1, an archive of any number of entries passes
    the guard; ``sniff_file`` (in the upload request) then has zipfile build a ZipInfo per
    entry: 400,000 entries, a 35 MB upload, took 19 s and 221 MB before parsing refused it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", b"<w:document/>")
        for index in range(ParseLimits().max_zip_entries + 1):
            archive.writestr(zipfile.ZipInfo(str(index)), b"")
    data = bytearray(out.getvalue())
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)  # entries on this disk, entries in all
    path = tmp_path / "lying.docx"
    path.write_bytes(bytes(data))
    with path.open("rb") as file, pytest.raises(LimitExceeded):
        check_entry_count(file, ParseLimits())


# --- chat citations (run on the event loop by chat/service.py:438) ---------------------------

_CITE = """
    from mainsail.chat.answering import Source, cite
    source = Source(1, "d", None, None, "Some passage text. Another sentence here.",
                    None, None, (), 0, 40, 1.0)
    print(len(cite(ANSWER, [source]).answer))
"""


def test_cite_answer_with_many_markers_is_linear() -> None:
    """answering.py:207 ``first_claim.setdefault(n, without_markers(claim_at(...)))`` works out
    the claim for every marker, even when the passage already has its claim (setdefault's
    argument is evaluated first), and ``claim_at`` runs ``without_markers`` over the sentence
    up to the marker (and lists every sentence start): O(markers x length). Measured
    (``"word " + "[1] " * k``): k=1,000 0.94 s, 2,000 3.4 s, 4,000 13.4 s; the 16,000 here
    (a 64 KB answer) ~200 s, against 0.1 s when only a passage's first marker computes it."""
    _finishes(_CITE.replace("ANSWER", '"word " + "[1] " * 16_000'))


def test_cite_answer_with_a_long_run_of_spaces_is_linear() -> None:
    """sentences.py:30 ``_GONE_RUN`` ``([ \\t]*)\\x00...`` is searched by ``close_gaps`` over
    the whole answer (``cite`` -> ``close_gaps``): from every position of a run of spaces
    without a NUL it scans to the run's end and backtracks: O(n^2). Measured: 10,000 spaces
    0.45 s, 20,000 1.6 s, 40,000 6.8 s; the 200,000 here ~170 s (a model stuck emitting
    whitespace; long space runs are few tokens)."""
    _finishes(_CITE.replace("ANSWER", '"Answer [1]." + " " * 200_000 + "x"'))
