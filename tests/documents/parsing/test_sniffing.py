"""Sniffing: the bytes decide, never the client's content type or file name."""

from __future__ import annotations

import gzip
import os
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from mainsail.documents.parsing import SUPPORTED, UnsupportedType, parse, sniff, sniff_file
from tests.documents.fixtures.make_fixtures import document_xml, docx_bytes, paragraph

FIXTURES = Path(__file__).parents[1] / "fixtures"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sample.txt", "text/plain"),
        ("sample.md", "text/markdown"),
        ("sample.html", "text/html"),
        ("sample.pdf", "application/pdf"),
        ("sample.docx", DOCX),
    ],
)
def test_every_sample_is_recognized_by_its_bytes_alone(name: str, expected: str) -> None:
    head = (FIXTURES / name).read_bytes()[:8192]

    assert sniff(head) == expected
    assert sniff_file(FIXTURES / name, "upload.bin") == expected
    assert expected in SUPPORTED


def test_a_pdf_named_txt_is_a_pdf() -> None:
    assert sniff((FIXTURES / "sample.pdf").read_bytes(), "notes.txt") == "application/pdf"


@pytest.mark.parametrize(
    ("head", "name"),
    [
        pytest.param(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(200), "report.pdf", id="exe"),
        pytest.param(b"\x7fELF\x02\x01\x01" + bytes(200), "report.pdf", id="elf"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(50), "a.png", id="png"),
        pytest.param(b"\xff\xd8\xff\xe0\x00\x10JFIF", "a.txt", id="jpeg"),
        pytest.param(gzip.compress(b"hello" * 100), "notes.txt", id="gzip"),
        pytest.param(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100), "old.doc", id="ole2"),
        pytest.param(os.urandom(8192), "data.txt", id="random"),
        pytest.param(_zip({"xl/workbook.xml": b"<w/>"}), "sheet.docx", id="xlsx"),
        pytest.param(_zip({"ppt/presentation.xml": b"<p/>"}), "deck.docx", id="pptx"),
        pytest.param(
            _zip({"mimetype": b"application/vnd.oasis.opendocument.text"}, zipfile.ZIP_STORED),
            "doc.docx",
            id="odt",
        ),
        pytest.param(_zip({"notes.txt": b"hi"}), "notes.docx", id="plain-zip"),
    ],
)
def test_other_formats_are_unsupported_whatever_their_name(
    tmp_path: Path, head: bytes, name: str
) -> None:
    with pytest.raises(UnsupportedType) as caught:
        sniff(head, name)
    assert "not supported" in caught.value.reason

    path = tmp_path / name
    path.write_bytes(head)
    with pytest.raises(UnsupportedType):
        sniff_file(path, name)


def test_a_docx_whose_main_part_lies_past_the_head_is_found_by_sniff_file(
    tmp_path: Path,
) -> None:
    filler = os.urandom(20_000)
    data = docx_bytes(
        document_xml(paragraph("late")), extra_entries=[("customXml/item1.bin", filler)]
    )
    # Rebuild with the (incompressible) filler before the Word parts.
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        names = sorted(source.namelist(), key=lambda name: name.startswith("word/"))
        for name in names:
            target.writestr(name, source.read(name), zipfile.ZIP_DEFLATED)
    path = tmp_path / "late.docx"
    path.write_bytes(out.getvalue())

    with pytest.raises(UnsupportedType):
        sniff(out.getvalue()[:8192])
    assert sniff_file(path) == DOCX


@pytest.mark.parametrize(
    ("data", "name", "expected"),
    [
        pytest.param("Café crème brûlée\n".encode("cp1252"), None, "text/plain", id="cp1252"),
        pytest.param("Plain UTF-16 text\n".encode("utf-16"), None, "text/plain", id="utf-16"),
        pytest.param("# Title\n\nText\n".encode("utf-16"), None, "text/markdown", id="utf-16-md"),
        pytest.param(b"Some notes\n", "notes.MD", "text/markdown", id="md-by-name"),
        pytest.param(b"# Install\n\nRun it.\n", "notes.txt", "text/markdown", id="md-heading"),
        pytest.param(
            b"Intro text\n\n## Usage\n\nSee [docs](http://x).\n", None, "text/markdown", id="md"
        ),
        pytest.param(b"x = 1\n# set y\ny = 2\n", "script.txt", "text/plain", id="comment"),
        pytest.param(b"<!doctype html><p>Hi", "page.md", "text/html", id="doctype"),
        pytest.param(b"  <!-- c -->\n<HTML lang=en>", "a.txt", "text/html", id="comment-html"),
        pytest.param(b"<p>Fragment</p>", "part.html", "text/html", id="html-by-name"),
        pytest.param(b"<p>Fragment</p>", "part.txt", "text/plain", id="fragment-as-text"),
        pytest.param("Cut 中".encode()[:-1], None, "text/plain", id="cut-multibyte"),
    ],
)
def test_text_types_come_from_content_and_extension(
    data: bytes, name: str | None, expected: str
) -> None:
    assert sniff(data, name) == expected


def test_parse_refuses_an_unknown_content_type_lazily(tmp_path: Path) -> None:
    blocks = parse(tmp_path / "missing", "image/png")

    with pytest.raises(UnsupportedType):
        next(blocks)


def test_text_in_an_encoding_we_do_not_guess_is_refused_with_advice() -> None:
    head = ("名前、年齢、住所。" * 50).encode("shift_jis")

    with pytest.raises(UnsupportedType, match="save it as UTF-8"):
        sniff(head, "notes.txt")
