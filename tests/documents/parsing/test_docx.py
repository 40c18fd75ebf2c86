"""DOCX: paragraphs, heading styles, lists and table rows; zip bombs and DTDs refused."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from mainsail.documents.parsing import (
    Block,
    CorruptDocument,
    LimitExceeded,
    ParseLimits,
    parse,
    sniff_file,
)
from tests.documents.fixtures.make_fixtures import (
    W_NS,
    document_xml,
    docx_bytes,
    paragraph,
    styles_xml,
    table,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
GUIDE = ("Mainsail guide",)
INSTALL = ("Mainsail guide", "Install")
LINUX = ("Mainsail guide", "Install", "Linux")
REFERENCE = ("Mainsail guide", "Reference")
MiB = 1024 * 1024


def _parse(tmp_path: Path, data: bytes, limits: ParseLimits = ParseLimits()) -> list[Block]:
    path = tmp_path / "doc.docx"
    path.write_bytes(data)
    return list(parse(path, DOCX, limits))


def test_sample_docx_parses_into_structured_blocks() -> None:
    blocks = list(parse(FIXTURES / "sample.docx", DOCX))

    assert blocks == [
        Block("Mainsail guide", heading=GUIDE, kind="heading"),
        Block("Café owners in 中文 cities love it 🚀.", heading=GUIDE),
        Block("Install", heading=INSTALL, kind="heading"),
        Block("Download the installer", heading=INSTALL, kind="list"),
        Block("Run it", heading=INSTALL, kind="list"),
        Block("Linux", heading=LINUX, kind="heading"),
        Block("make install\tPREFIX=/opt", heading=LINUX, kind="code"),
        Block("Reference", heading=REFERENCE, kind="heading"),
        Block("Name | Value", heading=REFERENCE, kind="table"),
        Block("timeout | 30 s", heading=REFERENCE, kind="table"),
        Block("First line\nsecond line", heading=REFERENCE),
        Block("Custom", heading=(*REFERENCE, "Custom"), kind="heading"),
        Block("Under the custom heading.", heading=(*REFERENCE, "Custom")),
    ]


def test_english_style_ids_are_headings_without_a_styles_part(tmp_path: Path) -> None:
    top, sub = paragraph("Top", style="Heading1"), paragraph("Sub", style="Heading2")
    body = top + paragraph("Body") + sub

    blocks = _parse(tmp_path, docx_bytes(document_xml(body)))

    assert [(block.text, block.heading) for block in blocks] == [
        ("Top", ("Top",)),
        ("Body", ("Top",)),
        ("Sub", ("Top", "Sub")),
    ]


def test_deleted_text_fallbacks_and_tab_stops_are_not_text(tmp_path: Path) -> None:
    body = (
        '<w:p xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006">'
        '<w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>'
        "<w:r><w:t>kept</w:t></w:r>"
        "<w:del><w:r><w:delText>deleted</w:delText></w:r></w:del>"
        "<w:ins><w:r><w:t> inserted</w:t></w:r></w:ins>"
        "<mc:AlternateContent><mc:Choice><w:r><w:t> choice</w:t></w:r></mc:Choice>"
        "<mc:Fallback><w:r><w:t> fallback</w:t></w:r></mc:Fallback></mc:AlternateContent>"
        "</w:p>"
    )

    assert [block.text for block in _parse(tmp_path, docx_bytes(document_xml(body)))] == [
        "kept inserted choice"
    ]


def test_a_nested_table_stays_inside_its_cell(tmp_path: Path) -> None:
    inner = table([["in 1", "in 2"]])
    body = (
        f"<w:tbl><w:tr><w:tc>{paragraph('outer')}{inner}</w:tc>"
        f"<w:tc>{paragraph('right')}</w:tc></w:tr></w:tbl>{paragraph('after')}"
    )

    blocks = _parse(tmp_path, docx_bytes(document_xml(body)))

    assert [(block.text, block.kind) for block in blocks] == [
        ("outer in 1 in 2 | right", "table"),
        ("after", "paragraph"),
    ]


def test_a_document_declaring_more_than_the_limit_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    body = paragraph("All work and no play makes Jack a dull boy. " * 50) * 1000  # ~2.3 MiB

    with pytest.raises(LimitExceeded, match="zip bomb"):
        _parse(tmp_path, docx_bytes(document_xml(body)), ParseLimits(max_uncompressed_bytes=MiB))


def test_a_highly_compressed_entry_is_refused_as_a_zip_bomb(tmp_path: Path) -> None:
    data = docx_bytes(
        document_xml(paragraph("ok")), extra_entries=[("word/media/bomb.bin", bytes(8 * MiB))]
    )

    with pytest.raises(LimitExceeded) as caught:
        _parse(tmp_path, data)
    assert "zip bomb" in caught.value.reason


def test_a_document_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    real = document_xml(paragraph("x" * 100) * 20_000).encode()  # ~2 MiB, highly compressible
    data = bytearray(docx_bytes(document_xml(paragraph("ok"))))
    data = bytearray(_replace_entry(bytes(data), "word/document.xml", real, declared=1000))

    with pytest.raises(CorruptDocument):
        _parse(tmp_path, bytes(data))


def test_too_many_zip_entries_are_refused(tmp_path: Path) -> None:
    extra = [(f"customXml/item{number}.xml", b"<a/>") for number in range(30)]
    data = docx_bytes(document_xml(paragraph("ok")), extra_entries=extra)

    with pytest.raises(LimitExceeded, match="zip entries"):
        _parse(tmp_path, data, ParseLimits(max_zip_entries=20))


def test_a_doctype_with_entities_is_refused(tmp_path: Path) -> None:
    laughs = (
        '<!DOCTYPE w:document [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    )
    body = "<w:p><w:r><w:t>&lol2;</w:t></w:r></w:p>"

    with pytest.raises(CorruptDocument, match="DOCTYPE"):
        _parse(tmp_path, docx_bytes(document_xml(body, prolog=laughs)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"PK\x03\x04" + b"\x00" * 100, "damaged", id="truncated-zip"),
        pytest.param(
            docx_bytes(document_xml(paragraph("ok")))[:-30], "damaged", id="cut-directory"
        ),
        pytest.param(docx_bytes(document_xml("<w:p><w:r><w:t>open")), "malformed", id="broken-xml"),
    ],
)
def test_a_broken_docx_is_refused(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(CorruptDocument, match=reason):
        _parse(tmp_path, data)


def test_a_zip_without_a_word_document_is_refused(tmp_path: Path) -> None:
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")

    with pytest.raises(CorruptDocument, match="not a Word document"):
        _parse(tmp_path, out.getvalue())


def test_a_main_part_not_named_document_xml_is_found_through_the_relationships(
    tmp_path: Path,
) -> None:
    data = docx_bytes(
        document_xml(paragraph("Title", style="Heading1") + paragraph("Body text.")),
        styles=styles_xml(),
        main="document2.xml",
    )
    path = tmp_path / "report.docx"
    path.write_bytes(data)

    assert sniff_file(path, "report.docx") == DOCX
    assert _parse(tmp_path, data) == [
        Block("Title", heading=("Title",), kind="heading"),
        Block("Body text.", heading=("Title",)),
    ]


def test_a_main_part_whose_content_type_is_not_word_is_not_read(tmp_path: Path) -> None:
    """The relationships name the package's main part whatever the application; its content
    type says whether it is a Word document."""
    package = BytesIO(docx_bytes(document_xml(paragraph("text")), main="document2.xml"))
    out = BytesIO()
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            content = source.read(name)
            if name == "[Content_Types].xml":
                content = content.replace(
                    b"wordprocessingml.document.main+xml", b"spreadsheetml.sheet.main+xml"
                )
            archive.writestr(name, content)
    data = out.getvalue()

    with pytest.raises(CorruptDocument, match="not a Word document"):
        _parse(tmp_path, data)


def test_strict_ooxml_namespaces_are_read(tmp_path: Path) -> None:
    xml = document_xml(paragraph("strict text")).replace(
        W_NS, "http://purl.oclc.org/ooxml/wordprocessingml/main"
    )

    assert [block.text for block in _parse(tmp_path, docx_bytes(xml))] == ["strict text"]


def _replace_entry(data: bytes, name: str, content: bytes, *, declared: int) -> bytes:
    """Rewrite ``data`` with ``name`` holding ``content`` but declaring ``declared`` bytes."""
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = content if info.filename == name else source.read(info)
            target.writestr(info.filename, body, zipfile.ZIP_DEFLATED)
    raw = bytearray(out.getvalue())
    # Patch the uncompressed size in the central directory header of the entry.
    encoded = name.encode()
    header = raw.rfind(b"PK\x01\x02", 0, raw.rfind(encoded))
    raw[header + 24 : header + 28] = declared.to_bytes(4, "little")
    return bytes(raw)


def test_styles_part_is_optional_and_localized_ids_need_it(tmp_path: Path) -> None:
    body = paragraph("Titel", style="Titre1") + paragraph("Text")

    with_styles = _parse(tmp_path, docx_bytes(document_xml(body), styles=styles_xml()))
    without = _parse(tmp_path, docx_bytes(document_xml(body)))

    assert with_styles[0] == Block("Titel", heading=("Titel",), kind="heading")
    assert without[0] == Block("Titel")


def test_long_paragraphs_and_cells_are_cut_without_losing_text(tmp_path: Path) -> None:
    long = "word " * 60
    body = paragraph(long) + table([["a", long, "b"]]) + paragraph("end")

    blocks = _parse(tmp_path, docx_bytes(document_xml(body)), ParseLimits(max_block_chars=50))

    assert all(len(block.text) <= 50 for block in blocks)
    assert blocks[-1] == Block("end")
    words = " ".join(block.text for block in blocks).replace("|", " ").split()
    assert words == ["word"] * 60 + ["a"] + ["word"] * 60 + ["b", "end"]


def test_tracked_changes_show_the_current_style_and_text(tmp_path: Path) -> None:
    body = (
        '<w:p><w:pPr><w:pStyle w:val="Heading1"/>'
        '<w:pPrChange w:id="1"><w:pPr><w:pStyle w:val="Normal"/></w:pPr></w:pPrChange>'
        "</w:pPr><w:r><w:t>Now a heading</w:t></w:r></w:p>"
    )

    blocks = _parse(tmp_path, docx_bytes(document_xml(body)))

    assert blocks == [Block("Now a heading", heading=("Now a heading",), kind="heading")]
