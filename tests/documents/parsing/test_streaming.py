"""Memory stays bounded by the piece and block sizes, whatever the file size."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.documents.parsing import Block, ParseLimits, parse
from tests.documents.fixtures.make_fixtures import pdf_bytes

MB = 1024 * 1024
LIMITS = ParseLimits()
LINE = "Sails are trimmed by the wind, and every line of this text says so again.\n"


def _write(path: Path, size: int, unit: str) -> Path:
    repeats = 1 * MB // len(unit) + 1
    chunk = (unit * repeats)[: 1 * MB].encode()
    with path.open("wb") as file:
        for _ in range(size // MB):
            file.write(chunk)
    return path


def _peak_while(blocks: Iterator[Block]) -> tuple[int, int, int]:
    """Peak traced memory above the start, block count and longest block, while consuming."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        count = longest = 0
        for block in blocks:
            count += 1
            longest = max(longest, len(block.text))
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    return peak, count, longest


@pytest.mark.parametrize(
    "unit",
    [
        pytest.param(LINE * 12 + "\n", id="paragraphs"),
        pytest.param(LINE, id="no-blank-lines"),
    ],
)
def test_a_50_mb_text_file_is_read_in_bounded_memory(tmp_path: Path, unit: str) -> None:
    path = _write(tmp_path / "big.txt", 50 * MB, unit)

    peak, count, longest = _peak_while(parse(path, "text/plain", LIMITS))

    assert peak < 5 * MB
    assert count > 1
    assert longest <= LIMITS.max_block_chars


def test_a_text_file_without_any_break_is_cut_at_the_block_limit(tmp_path: Path) -> None:
    path = _write(tmp_path / "blob.txt", 8 * MB, "x" * 1000)

    peak, count, longest = _peak_while(parse(path, "text/plain", LIMITS))

    assert peak < 5 * MB
    assert longest == LIMITS.max_block_chars
    assert count == -(-8 * MB // LIMITS.max_block_chars)


@pytest.mark.parametrize(
    ("name", "content_type", "unit"),
    [
        ("big.md", "text/markdown", f"## Part\n\n{LINE * 6}\n- item\n- *item*\n\n"),
        ("big.html", "text/html", f"<h2>Part</h2><p>{LINE * 6}</p><ul><li>x</li><li>y</li></ul>"),
    ],
)
def test_markdown_and_html_are_read_in_bounded_memory(
    tmp_path: Path, name: str, content_type: str, unit: str
) -> None:
    path = _write(tmp_path / name, 3 * MB, unit)

    peak, count, longest = _peak_while(parse(path, content_type, LIMITS))

    assert peak < 5 * MB
    assert count > 10_000
    assert longest <= LIMITS.max_block_chars


def test_pdf_pages_are_forgotten_once_read(tmp_path: Path) -> None:
    # Each page draws its own 256 KiB image: pypdf would keep all 40 (10 MiB) in its cache.
    image = os.urandom(256 * 1024)
    pages = [[f"Page {number} says hello."] for number in range(1, 41)]
    path = tmp_path / "big.pdf"
    path.write_bytes(pdf_bytes(pages, image_bytes=image, compress=False))

    peak, count, _ = _peak_while(parse(path, "application/pdf", LIMITS))

    assert count == 40
    assert peak < 3 * MB
