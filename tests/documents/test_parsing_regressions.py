"""What leaving out comments and hidden elements, and reading DOCX notes, must not cost: text
a reader sees (a comment marker in a code span, the page after an unclosed hidden element,
the other cells of a table, a document with many hyperlinks)."""

from __future__ import annotations

from pathlib import Path

from mainsail.documents.parsing import Block, parse
from tests.documents.fixtures.make_fixtures import document_xml, docx_bytes, styles_xml

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _parse(tmp_path: Path, name: str, data: str | bytes, content_type: str) -> list[Block]:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return list(parse(path, content_type))


def _texts(blocks: list[Block]) -> str:
    return "\n".join(block.text for block in blocks)


# --- Markdown: "<!--" in a code span is no comment -------------------------------------------


def test_markdown_comment_opener_in_inline_code_keeps_the_rest_of_the_document(
    tmp_path: Path,
) -> None:
    """A code span takes precedence over inline HTML (CommonMark 6.1): "`<!--`" is literal
    text. ``_uncommented`` reads it as an unclosed comment and drops every later line until
    some "-->" appears: here the rest of the document (a heading and its paragraph)."""
    text = (
        "# Comments\n\n"
        "An HTML comment opens with `<!--` and runs to the closing marker.\n\n"
        "## Tables\n\n"
        "Tables need a header row.\n"
    )
    blocks = _parse(tmp_path, "doc.md", text, "text/markdown")

    joined = _texts(blocks)
    assert "Tables need a header row." in joined
    assert [block.text for block in blocks if block.kind == "heading"] == ["Comments", "Tables"]


def test_markdown_comments_in_code_spans_stay_and_text_after_a_block_comment_is_kept(
    tmp_path: Path,
) -> None:
    text = (
        "Write `<!-- note -->` to hide a note, <!-- like this --> here.\n\n"
        "<!-- a block comment --> Visible after it.\n\n"
        "  <!-- indented opener\nstill inside\n-->\nAfter the block.\n"
    )
    assert [block.text for block in _parse(tmp_path, "c.md", text, "text/markdown")] == [
        "Write `<!-- note -->` to hide a note,  here.",
        "Visible after it.",
        "After the block.",
    ]


# --- HTML: a hidden element whose end tag is left out ----------------------------------------


def test_html_unclosed_hidden_inline_element_ends_with_its_parent(tmp_path: Path) -> None:
    """``<span hidden>`` closed implicitly by its parent's end tag (``</div>``, as browsers
    read it) kept everything after it hidden: the skipping waits for a ``</span>`` that never
    comes, so the rest of the page is lost (before today the page was indexed)."""
    page = (
        "<html><body>"
        "<div>Shipping <span hidden>internal note</div>"
        "<p>Orders ship within two days.</p>"
        "<ul><li>Express <span hidden>x</li><li>Standard delivery</li></ul>"
        "</body></html>"
    )
    joined = _texts(_parse(tmp_path, "page.html", page, "text/html"))

    assert "Orders ship within two days." in joined
    assert "Standard delivery" in joined
    assert "internal note" not in joined


def test_html_hidden_paragraph_in_a_table_cell_keeps_the_other_cells(tmp_path: Path) -> None:
    """A ``<p hidden>`` is cleared only by a block element (or a table start/end); a cell's
    end or the next cell (``</td>``, ``<td>``, ``<tr>``, all of which close the paragraph in
    HTML) does not, so every later cell of the table is dropped."""
    page = (
        "<table>"
        "<tr><td><p hidden>Supplier code<td>Price<td>12 EUR</tr>"
        "<tr><td>Tax<td>2 EUR</tr>"
        "</table>"
        "<p>Prices include delivery.</p>"
    )
    joined = _texts(_parse(tmp_path, "prices.html", page, "text/html"))

    assert "Price | 12 EUR" in joined
    assert "Tax | 2 EUR" in joined
    assert "Supplier code" not in joined


# --- DOCX: the main part's relationships, read for the notes ---------------------------------


def test_docx_with_many_hyperlinks_is_not_refused_as_a_zip_bomb(tmp_path: Path) -> None:
    """Finding footnotes and endnotes reads the main part's relationships with the 1 MiB cap
    of the small package parts (``_package_elements``). Every hyperlink is a relationship
    there (~200 bytes each): a document with ~5,500 links (a link directory, a long
    bibliography) has a .rels part over 1 MiB and is now refused as "a zip bomb"; it parsed
    before today."""
    links = [
        ("hyperlink", f"https://example.com/catalogue/section-{i:05d}/item-details?ref=handbook")
        for i in range(5500)
    ]
    body = "<w:p><w:r><w:t>See the catalogue links below.</w:t></w:r></w:p>"
    data = docx_bytes(document_xml(body), styles=styles_xml(), relationships=links)

    blocks = _parse(tmp_path, "links.docx", data, DOCX)

    assert [block.text for block in blocks] == ["See the catalogue links below."]
