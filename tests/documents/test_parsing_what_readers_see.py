# ruff: noqa: RUF001, RUF002  (the samples' own characters: primes, multiplication signs)
"""Text a reader of the file does not see, or sees differently,
in the parsed blocks (shapes taken from samples in ../shared/data/documents, named per test).
"""

from __future__ import annotations

from pathlib import Path

from mainsail.documents.parsing import Block, parse
from tests.documents.fixtures.make_fixtures import document_xml, docx_bytes, styles_xml

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
MATH = "http://schemas.openxmlformats.org/officeDocument/2006/math"


def _parse(tmp_path: Path, name: str, data: bytes, content_type: str) -> list[Block]:
    path = tmp_path / name
    path.write_bytes(data)
    return list(parse(path, content_type))


# --- HTML: inline display:none -------------------------------------------------------------


def test_html_display_none_copies_are_not_read_as_text(tmp_path: Path) -> None:
    """markitdown__test_wikipedia.html: the coordinates carry a machine-readable copy in a
    ``style="display:none"`` span, and the article a hidden short description; a reader sees
    neither, but the chunks said "47°38′23″N ... / 47.63972°N 122.12833°W / 47.63972;
    -122.12833" (the position twice over) and "American multinational technology
    corporation" as the article's first paragraph. The ``hidden`` attribute was honoured,
    the equivalent inline style was not."""
    page = (
        "<html><body>"
        '<div style="display:none">American multinational technology corporation</div>'
        "<p>Coordinates: 47°38′23″N 122°7′42″W"
        '<span style="display:none">&#xfeff; / <span class="geo">47.63972; -122.12833</span>'
        "</span></p>"
        '<p>Founded April 4, 1975<span style="DISPLAY: none !important">&#160;(1975-04-04)</span>'
        " in Albuquerque</p>"
        '<p style="color: red; display:none;">Hidden paragraph</p>'
        '<p style="display: inline-block">Shown</p>'
        "</body></html>"
    )
    blocks = _parse(tmp_path, "wiki.html", page.encode(), "text/html")
    assert [block.text for block in blocks] == [
        "Coordinates: 47°38′23″N 122°7′42″W",
        "Founded April 4, 1975 in Albuquerque",
        "Shown",
    ]


# --- DOCX: equations ----------------------------------------------------------------------


def _math_paragraph(math: str) -> bytes:
    body = f'<w:p xmlns:m="{MATH}"><m:oMathPara><m:oMath>{math}</m:oMath></m:oMathPara></w:p>'
    return docx_bytes(document_xml(body), styles=styles_xml())


def _r(text: str) -> str:
    return f'<m:r><m:t xml:space="preserve">{text}</m:t></m:r>'


def test_docx_equation_fractions_and_exponents_keep_their_meaning(tmp_path: Path) -> None:
    """markitdown__equations.docx: "sin θ = mλ/a = (1)(550×10⁻⁶ mm)/(2.5 mm) = 2.2×10⁻⁴" was
    read as "sin⁡θ=mλa=(1)550×10-6 mm2.5 mm=2.2×10-4": the fraction bar, the delimiters and
    the superscript are structure (m:f, m:d, m:sSup), not text, so numerator and
    denominator ran together and "10⁻⁴" became "10-4" (ten minus four)."""
    math = (
        _r("sin⁡") + _r("θ") + _r("=")
        + f"<m:f><m:num>{_r('mλ')}</m:num><m:den>{_r('a')}</m:den></m:f>"
        + _r("=")
        + "<m:f><m:num>" + _r("(1)")
        + "<m:d><m:dPr><m:ctrlPr/></m:dPr><m:e>" + _r("550×")
        + f"<m:sSup><m:e>{_r('10')}</m:e><m:sup>{_r('-6')}</m:sup></m:sSup>"
        + _r(" ") + _r("mm") + "</m:e></m:d></m:num>"
        + f"<m:den>{_r('2.5')}{_r(' ')}{_r('mm')}</m:den></m:f>"
        + _r("=2.2×")
        + f"<m:sSup><m:e>{_r('10')}</m:e><m:sup>{_r('-4')}</m:sup></m:sSup>"
    )  # fmt: skip
    blocks = _parse(tmp_path, "eq.docx", _math_paragraph(math), DOCX)
    assert [block.text for block in blocks] == [
        "sin⁡θ=(mλ)/a=((1)(550×10^(-6) mm))/(2.5 mm)=2.2×10^(-4)"
    ]


def test_docx_equation_subscripts_and_square_brackets(tmp_path: Path) -> None:
    """A subscript and a delimiter with its own characters (m:begChr/m:endChr): "[x_i]",
    not "xi"."""
    math = (
        '<m:d><m:dPr><m:begChr m:val="["/><m:endChr m:val="]"/></m:dPr><m:e>'
        f"<m:sSub><m:e>{_r('x')}</m:e><m:sub>{_r('i')}</m:sub></m:sSub>"
        "</m:e></m:d>"
    )
    blocks = _parse(tmp_path, "sub.docx", _math_paragraph(math), DOCX)
    assert [block.text for block in blocks] == ["[x_i]"]
