"""What every parser promises, whatever the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainsail.documents.parsing import ParseLimits, parse, sniff_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
SAMPLES = ["sample.txt", "sample.md", "sample.html", "sample.pdf", "sample.docx"]


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("limit", [40, 100_000])
def test_blocks_are_stripped_non_empty_and_within_the_limit(name: str, limit: int) -> None:
    path = FIXTURES / name

    blocks = list(parse(path, sniff_file(path), ParseLimits(max_block_chars=limit)))

    assert blocks
    for block in blocks:
        assert block.text == block.text.strip() != ""
        assert len(block.text) <= limit
        assert all(title == title.strip() != "" for title in block.heading)
        assert (block.page is not None) == name.endswith(".pdf")


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_keeps_its_non_ascii_text(name: str) -> None:
    path = FIXTURES / name

    text = "\n".join(block.text for block in parse(path, sniff_file(path)))

    assert "Café owners in 中文 cities love it 🚀." in text


@pytest.mark.parametrize("name", SAMPLES)
def test_an_abandoned_parse_can_be_closed(name: str) -> None:
    path = FIXTURES / name
    blocks = parse(path, sniff_file(path))

    next(blocks)
    blocks.close()  # releases the open file; a second close is harmless
    blocks.close()
