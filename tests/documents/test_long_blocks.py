"""Blocks of long paragraphs hold whole words (a read piece can end inside one), and DOCX
outline levels of 9 ("body text") are not headings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from mainsail.documents.chunking import SEPARATOR, Chunker
from mainsail.documents.parsing import ParseLimits, parse
from mainsail.documents.parsing.model import APPLICATION_DOCX, TEXT_HTML
from mainsail.embeddings.local import model_dir
from tests.documents.fixtures.make_fixtures import (
    W_NS,
    document_xml,
    docx_bytes,
    paragraph,
)

# Distinct nine-character words: a word cut in two shows up as a word of another length.
WORDS = [f"word{i:05d}" for i in range(25_000)]
PROSE = " ".join(WORDS)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


def _words_of(blocks: list[Any]) -> list[str]:
    return " ".join(block.text for block in blocks).split()


# --- long HTML / DOCX paragraphs ----------------------------------------------------------


def test_a_long_html_paragraph_is_not_cut_inside_a_word(tmp_path: Path) -> None:
    """A <p> longer than max_block_chars (100,000) read in 64 KiB pieces, default limits: a
    read piece ends inside a word, and the block is cut before that word, not inside it
    (which made "word131" + blank line + "05" in a chunk)."""
    path = tmp_path / "long.html"
    path.write_text(f"<html><body><p>{PROSE}</p></body></html>", encoding="utf-8")
    blocks = list(parse(path, TEXT_HTML))
    assert len(blocks) > 1  # the paragraph is over the block limit
    split = [word for word in _words_of(blocks) if len(word) != 9]
    assert split == []
    assert _words_of(blocks) == WORDS


@pytest.mark.parametrize("read_size", [1000, 4096])
def test_a_long_docx_paragraph_is_not_cut_inside_a_word(tmp_path: Path, read_size: int) -> None:
    """Same for DOCX: a paragraph over the block limit is spilled up to its last whole word,
    not up to wherever the text expat handed over so far ends."""
    path = tmp_path / "long.docx"
    path.write_bytes(docx_bytes(document_xml(paragraph(" ".join(WORDS[:3000])))))
    limits = ParseLimits(read_size=read_size, max_block_chars=5000)
    blocks = list(parse(path, APPLICATION_DOCX, limits))
    assert len(blocks) > 1
    split = [word for word in _words_of(blocks) if len(word) != 9]
    assert split == []


def test_chunks_of_a_long_html_paragraph_hold_only_words_of_the_document(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    """What search returns: a chunk whose text holds a word that is not in the document."""
    path = tmp_path / "long.html"
    path.write_text(f"<html><body><p>{PROSE}</p></body></html>", encoding="utf-8")
    blocks = list(parse(path, TEXT_HTML))
    chunker = Chunker(tokenizer, chunk_size=200, chunk_overlap=30)
    known = set(WORDS)
    text = SEPARATOR.join(block.text for block in blocks)
    foreign = []
    for chunk in chunker.chunks(iter(blocks)):
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        foreign += [w for w in chunk.text.split() if w not in known]
    assert foreign == []


# --- DOCX: a style with outline level 9 (body text) based on a heading -------------------


def test_a_toc_heading_style_with_body_text_outline_level_is_not_a_heading(
    tmp_path: Path,
) -> None:
    """Word's built-in "TOC Heading" style is based on Heading 1 but sets outline level 9
    ("body text"), so Word does not treat it as a heading: an explicit level ends the
    lookup, and "Contents" does not replace "Guide" in the heading path."""
    styles = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<w:styles xmlns:w="{W_NS}">'
        '<w:style w:type="paragraph" w:default="1" w:styleId="Normal">'
        '<w:name w:val="Normal"/></w:style>'
        '<w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/>'
        '<w:basedOn w:val="Normal"/><w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>'
        '<w:style w:type="paragraph" w:styleId="TOCHeading"><w:name w:val="TOC Heading"/>'
        '<w:basedOn w:val="Heading1"/><w:pPr><w:outlineLvl w:val="9"/></w:pPr></w:style>'
        "</w:styles>"
    )
    body = (
        paragraph("Guide", style="Heading1")
        + paragraph("Contents", style="TOCHeading")
        + paragraph("Intro ... 1")
    )
    path = tmp_path / "toc.docx"
    path.write_bytes(docx_bytes(document_xml(body), styles=styles))
    blocks = list(parse(path, APPLICATION_DOCX))
    by_text = {block.text: block for block in blocks}
    assert by_text["Contents"].kind != "heading"
    assert by_text["Intro ... 1"].heading == ("Guide",)
