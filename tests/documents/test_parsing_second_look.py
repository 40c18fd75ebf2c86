"""The contract of docs/architecture.md ("What a reader does not see is not indexed (HTML ...
`hidden` elements; Markdown HTML comments ...) and what a reader sees is") in the cases a first
version of those rules got wrong: elements nested in a hidden one, comments over lines or
around code spans, a soft hyphen's join, a document's own private-use characters.
"""

from __future__ import annotations

from pathlib import Path

from mainsail.documents.parsing import Block, parse
from tests.documents.fixtures.make_fixtures import pdf_bytes


def _html(tmp_path: Path, page: str) -> list[Block]:
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    return list(parse(path, "text/html"))


def _markdown(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return list(parse(path, "text/markdown"))


def _pdf(tmp_path: Path, lines: list[str]) -> list[Block]:
    path = tmp_path / "doc.pdf"
    path.write_bytes(pdf_bytes([lines]))
    return list(parse(path, "application/pdf"))


def _text(blocks: list[Block]) -> str:
    return "\n\n".join(block.text for block in blocks)


# --- HTML: hidden content leaks -------------------------------------------------------------


def test_html_hidden_section_holding_a_div_inside_a_wrapper_div_stays_hidden(
    tmp_path: Path,
) -> None:
    """htmldoc.py _ends_hidden (start=False): any end tag whose name is among the elements
    open when the hidden element began ends it. Elements opened inside the hidden element are
    not tracked, so the `</div>` of a div inside a hidden <section> is taken for the end of
    the page's wrapper <div id=app> and everything after it in the section is indexed."""
    blocks = _html(
        tmp_path,
        "<body><div id=app><h1>Title</h1>"
        "<section hidden><div>Draft</div><p>Internal answer: 42</p></section>"
        "<p>Visible</p></div></body>",
    )
    text = _text(blocks)

    assert "Visible" in text
    assert "Internal answer" not in text, text


def test_html_hidden_submenu_in_a_list_item_stays_hidden(tmp_path: Path) -> None:
    """htmldoc.py _ends_hidden (start=True): a <li> start tag ends a hidden element whenever a
    <li> was open when it began. A hidden submenu (<ul hidden> inside a menu's <li>) has <li>s
    of its own, which a browser nests in the hidden <ul>; here the first one unhides it and
    every submenu entry is indexed. (The same happens to a hidden element holding a table
    inside a table cell.)"""
    blocks = _html(
        tmp_path,
        "<ul><li>Products<ul hidden><li>Secret one</li><li>Secret two</li></ul></li>"
        "<li>About</li></ul>",
    )

    assert [block.text for block in blocks] == ["Products", "About"]


# --- Markdown: comments ---------------------------------------------------------------------


def test_markdown_comment_spanning_lines_inside_a_paragraph_is_not_indexed(
    tmp_path: Path,
) -> None:
    """markdown.py _uncommented: only a line starting with `<!--` opens a multi-line comment
    now; a comment opened later in a line (inside a paragraph, a list item, a block quote) is
    left in the text whole, opener, content and closer. CommonMark reads it as inline raw HTML
    (a comment), which a reader never sees."""
    blocks = _markdown(
        tmp_path,
        "Some text <!-- draft: secret plan\nstill secret --> more visible text.\n\n"
        "- item one <!-- reviewer note\n  do not publish -->\n- item two\n",
    )
    text = _text(blocks)

    assert "more visible text." in text
    assert "item two" in text
    assert "secret plan" not in text, text
    assert "do not publish" not in text, text


def test_markdown_text_after_a_comment_blocks_closing_line_is_kept(tmp_path: Path) -> None:
    """markdown.py _uncommented: while in a comment block the line holding `-->` is dropped
    whole, so text after the `-->` is lost. In CommonMark that line belongs to an HTML block
    passed through as raw HTML; a browser shows what follows the comment's end."""
    blocks = _markdown(
        tmp_path,
        "Intro paragraph.\n\n<!-- editor note\nstill the note -->Visible after the comment.\n",
    )
    text = _text(blocks)

    assert "Visible after the comment." in text, text
    assert "editor note" not in text


def test_markdown_comment_holding_a_code_span_is_not_indexed(tmp_path: Path) -> None:
    """markdown.py _without_comments: code spans are found before comments, so a comment in a
    line that holds backticks (`<!-- TODO: rename `foo` -->`) is split around the "code span"
    and neither half matches _COMMENT: the whole comment is indexed. The comment opens first,
    so CommonMark reads it as one comment (no code span inside)."""
    blocks = _markdown(tmp_path, "See the docs. <!-- TODO: rename `foo` secret --> More text.\n")
    text = _text(blocks)

    assert "More text." in text
    assert "secret" not in text, text


# --- PDF: soft hyphens ----------------------------------------------------------------------


def test_pdf_soft_hyphen_join_does_not_split_the_paragraph(tmp_path: Path) -> None:
    """pdf.py _soft_joined: the joined line keeps the height of its first line, so the gap
    to the following line is two line spacings, more than _GAP_FACTOR times the usual one,
    and _breaks starts a new paragraph in mid-sentence after every soft-hyphen join."""
    blocks = _pdf(
        tmp_path,
        [
            "Open-domain question answering in this work relies on an ef\u00ad",
            "ficient passage retrieval step to select candidate contexts, where",
            "traditional sparse vector space models such as TF-IDF or BM25 are",
            "the de facto method used by most of the systems we compared here.",
        ],
    )

    assert len(blocks) == 1, [block.text for block in blocks]
    assert "efficient passage retrieval" in blocks[0].text


def test_pdf_private_use_character_at_a_line_end_does_not_glue_the_next_line_on(
    tmp_path: Path,
) -> None:
    """pdf.py _SOFT: soft hyphens are carried as U+E000, but a document's own U+E000 (a
    private-use glyph: icon fonts such as Material Icons start there) is not told apart. At a
    line end it joins the next line with no space ("todayOpening", one word for search) and
    anywhere else it is deleted."""
    blocks = _pdf(
        tmp_path,
        [
            "Questions about your booking? Call the front desk today\ue000",
            "Opening hours are nine to five on weekdays and ten to two on Saturdays.",
        ],
    )
    text = _text(blocks)

    assert "todayOpening" not in text, repr(text)
    assert "Call the front desk today" in text
