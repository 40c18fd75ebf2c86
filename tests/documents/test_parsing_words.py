"""Words a user searches for, as real-world files hold them: ligatures from PDF text layers,
soft hyphens in HTML, DOCX footnotes, endnotes and equations, a Markdown table before a
thematic break. Each test builds a small file shaped like a sample of ../shared/data/documents
(named in the test).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL

from mainsail.documents.parsing import Block, parse
from tests.documents.fixtures.make_fixtures import (
    W_NS,
    document_xml,
    docx_bytes,
    pdf_bytes,
    styles_xml,
)
from tests.fixtures.database import keyword_match

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _parse(tmp_path: Path, name: str, data: bytes, content_type: str) -> list[Block]:
    path = tmp_path / name
    path.write_bytes(data)
    return list(parse(path, content_type))


# --- PDF: typographic ligatures --------------------------------------------------------


async def test_pdf_ligatures_are_extracted_as_letters_so_keyword_search_finds_the_words(
    tmp_path: Path, database_url: URL
) -> None:
    """TeX and InDesign PDFs map "fi", "fl", "ffi" to the ligature code points U+FB01 etc.
    (unstructured__multi-column-2p.pdf: "ef-\\nﬁcient", "simpliﬁed"; layout-parser-paper-fast:
    "ﬀ", "ﬃ"). pypdf passes them through and parse_pdf keeps them, so the stored text says
    "efﬁcient": PostgreSQL reads that as another word than "efficient", and a keyword search
    for "efficient" or "flexible" never finds the passage."""
    data = pdf_bytes([["Dense retrieval is efﬁcient and ﬂexible for the ofﬁce."]])
    text = "\n\n".join(
        block.text for block in _parse(tmp_path, "paper.pdf", data, "application/pdf")
    )

    assert await keyword_match(database_url, text, "efficient"), text
    assert await keyword_match(database_url, text, "flexible"), text
    assert "efficient and flexible for the office" in text


# --- HTML: soft hyphens ------------------------------------------------------------------


async def test_html_soft_hyphens_do_not_hide_words_from_keyword_search(
    tmp_path: Path, database_url: URL
) -> None:
    """``&shy;`` (U+00AD) marks where a browser may hyphenate; it is invisible otherwise, and
    German, Dutch and Finnish pages put it inside long words. The DOCX parser drops Word's
    soft hyphen (<w:softHyphen/>), but clean() keeps U+00AD (only C0/C1 controls are dropped),
    so the HTML passage is stored as "Donau\\xaddampf\\xadschiff": PostgreSQL makes that one
    lexeme with the soft hyphens in it, and a search for "Donaudampfschiff" finds nothing."""
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        "<p>Die Donau&shy;dampf&shy;schiff&shy;fahrt beginnt im April.</p></body></html>"
    )
    text = "\n\n".join(
        block.text for block in _parse(tmp_path, "seite.html", page.encode(), "text/html")
    )

    assert await keyword_match(database_url, text, "Donaudampfschifffahrt"), repr(text)
    assert "Donaudampfschifffahrt" in text


# --- DOCX: footnotes and endnotes --------------------------------------------------------

FOOTNOTES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    f'<w:footnotes xmlns:w="{W_NS}">'
    '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
    '<w:footnote w:id="1"><w:p><w:r><w:footnoteRef/></w:r><w:r><w:t xml:space="preserve">'
    " To be approved by the United States Trustee, the banking institution must execute a"
    " Uniform Depository Agreement.</w:t></w:r></w:p></w:footnote>"
    "</w:footnotes>"
)


def test_docx_footnotes_and_endnotes_are_read_after_the_body(tmp_path: Path) -> None:
    """Footnotes and endnotes (citations, conditions, legal caveats) are parts of their own,
    named by the main part's relationships; their text follows the body's, under no heading,
    without the separator notes. The footnote is from unstructured__handbook-872p.docx."""
    body = (
        '<w:p><w:pPr><w:pStyle w:val="Titre1"/></w:pPr><w:r><w:t>Deposits</w:t></w:r></w:p>'
        '<w:p><w:r><w:t xml:space="preserve">Funds must be held in an approved bank.</w:t></w:r>'
        '<w:r><w:footnoteReference w:id="1"/></w:r></w:p>'
    )
    endnotes = (
        FOOTNOTES.replace("footnote", "endnote")
        .replace("the banking institution must", "an endnote says it")
        .replace("Uniform Depository Agreement", "Closing Statement")
    )
    data = docx_bytes(
        document_xml(body),
        styles=styles_xml(),
        extra_entries=[
            ("word/footnotes.xml", FOOTNOTES.encode()),
            ("word/endnotes.xml", endnotes.encode()),
            ("word/unlinked.xml", FOOTNOTES.replace("Uniform", "Unlinked").encode()),
        ],
        relationships=[("footnotes", "footnotes.xml"), ("endnotes", "/word/endnotes.xml")],
    )

    blocks = list(_parse(tmp_path, "handbook.docx", data, DOCX))

    assert [block.text for block in blocks] == [
        "Deposits",
        "Funds must be held in an approved bank.",
        "To be approved by the United States Trustee, the banking institution must execute a"
        " Uniform Depository Agreement.",
        "To be approved by the United States Trustee, an endnote says it execute a"
        " Closing Statement.",
    ]
    assert [block.heading for block in blocks[2:]] == [(), ()]


def test_docx_equation_text_stays_in_its_sentence(tmp_path: Path) -> None:
    """An inline equation's text is Office Math (``m:t``), not ``w:t``: it vanished, leaving
    "For ," (markitdown__equations.docx says "For m=1,")."""
    math = "http://schemas.openxmlformats.org/officeDocument/2006/math"
    body = (
        f'<w:p xmlns:m="{math}"><w:r><w:t xml:space="preserve">For </w:t></w:r>'
        "<m:oMath><m:r><m:t>m=1</m:t></m:r></m:oMath><w:r><w:t>,</w:t></w:r></w:p>"
    )
    data = docx_bytes(document_xml(body), styles=styles_xml())

    assert [block.text for block in _parse(tmp_path, "eq.docx", data, DOCX)] == ["For m=1,"]


# --- Markdown: a table followed by a thematic break --------------------------------------


def test_markdown_table_then_thematic_break_is_not_a_setext_heading(tmp_path: Path) -> None:
    """A GFM table ends at a block-level structure, so ``---`` right under its last row is a
    thematic break (markdown-it with tables renders <table> then <hr>). _Builder only learns
    that its lines are a table at flush time (kind is still "paragraph"), so the setext rule
    turns the whole table into a level-2 heading: the table's rows become a heading block, and
    every block after it, until the next heading, carries the table text as its heading path."""
    source = (
        "# Prices\n\n"
        "| Item | Price |\n"
        "|------|-------|\n"
        "| Tea  | 2     |\n"
        "---\n\n"
        "Shipping is free.\n"
    )
    blocks = _parse(tmp_path, "prices.md", source.encode(), "text/markdown")

    assert [(block.kind, block.heading) for block in blocks] == [
        ("heading", ("Prices",)),
        ("table", ("Prices",)),
        ("paragraph", ("Prices",)),
    ]
