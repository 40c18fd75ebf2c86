"""HTML: visible text only, block elements end blocks, headings make the path, rows stay rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainsail.documents.parsing import Block, CorruptDocument, ParseLimits, parse, sniff_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
GUIDE = ("Mainsail guide",)
INSTALL = ("Mainsail guide", "Install")
LINUX = ("Mainsail guide", "Install", "Linux")
REFERENCE = ("Mainsail guide", "Reference")


def _parse(tmp_path: Path, html: bytes, limits: ParseLimits = ParseLimits()) -> list[Block]:
    path = tmp_path / "page.html"
    path.write_bytes(html)
    return list(parse(path, "text/html", limits))


def test_sample_html_parses_into_structured_blocks() -> None:
    blocks = list(parse(FIXTURES / "sample.html", "text/html"))

    assert blocks == [
        Block("Mainsail guide", heading=GUIDE, kind="heading"),
        Block(
            "Mainsail is a small AI backend. Café owners in 中文 cities love it 🚀.", heading=GUIDE
        ),
        Block("Install", heading=INSTALL, kind="heading"),
        Block("Download the installer", heading=INSTALL, kind="list"),
        Block("Run it\nthen relax", heading=INSTALL, kind="list"),
        Block("Linux", heading=LINUX, kind="heading"),
        Block("make install\n  PREFIX=/opt", heading=LINUX, kind="code"),
        Block("Reference", heading=REFERENCE, kind="heading"),
        Block("Settings", heading=REFERENCE),
        Block("Name | Value", heading=REFERENCE, kind="table"),
        Block("timeout | 30 & more", heading=REFERENCE, kind="table"),
        Block("A quoted tip.", heading=REFERENCE, kind="quote"),
        Block("Closing words.", heading=REFERENCE),
    ]


def test_the_meta_charset_decodes_legacy_pages(tmp_path: Path) -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><p>Café</p></body></html>'

    assert [block.text for block in _parse(tmp_path, page.encode("latin-1"))] == ["Café"]


def test_the_body_starts_even_when_head_is_never_closed(tmp_path: Path) -> None:
    page = b"<html><head><title>T</title><p>Visible</p><div>Also</div>"

    assert [block.text for block in _parse(tmp_path, page)] == ["Visible", "Also"]


def test_nested_tables_stay_inside_the_outer_cell(tmp_path: Path) -> None:
    page = (
        b"<table><tr><td>outer<table><tr><td>in 1</td><td>in 2</td></tr></table></td>"
        b"<td>right</td></tr></table><p>after</p>"
    )

    assert [(block.text, block.kind) for block in _parse(tmp_path, page)] == [
        ("outer in 1 in 2 | right", "table"),
        ("after", "paragraph"),
    ]


def test_a_comment_that_never_ends_is_refused(tmp_path: Path) -> None:
    page = b"<p>start</p><!--" + b"x" * 10_000

    with pytest.raises(CorruptDocument, match="never ends"):
        _parse(tmp_path, page, ParseLimits(max_markup_chars=4096, read_size=1024))


def test_a_doctype_internal_subset_is_not_text(tmp_path: Path) -> None:
    page = (
        b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "x.dtd"'
        b' [ <!ENTITY nbsp "&#160;"> ]><html><body><p>Body</p></body></html>'
    )

    assert [block.text for block in _parse(tmp_path, page)] == ["Body"]


def test_a_marked_section_with_an_unknown_keyword_is_skipped_like_a_comment(
    tmp_path: Path,
) -> None:
    """The standard library's parser raises on it; a browser reads a bogus comment."""
    page = b"<p>Before the section.</p><p>a<![foo[ x ]]>b</p><p>After it.</p>"

    assert [block.text for block in _parse(tmp_path, page)] == [
        "Before the section.",
        "ab",
        "After it.",
    ]


def test_a_legacy_page_naming_its_charset_is_html_to_the_sniffer(tmp_path: Path) -> None:
    japanese = (
        "これは日本語の文章です。漢字とひらがなとカタカナが含まれています。検索のための文書。"
    )
    page = (
        f'<html><head><meta charset="shift_jis"></head><body><p>{japanese * 20}</p></body></html>'
    ).encode("shift_jis")
    path = tmp_path / "page.html"
    path.write_bytes(page)

    assert sniff_file(path, "page.html") == "text/html"
    assert [block.text for block in parse(path, "text/html")] == [japanese * 20]
