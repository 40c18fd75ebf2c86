"""Parsing edges found in a review: declared charsets that mislead or name no text encoding,
an encrypted package part, where a broken byte falls in a UTF-8 file, quotes in a DOCTYPE."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from mainsail.documents.parsing import (
    CorruptDocument,
    DocumentError,
    ParseLimits,
    parse,
    sniff_file,
)
from mainsail.documents.parsing.textio import read_pieces
from tests.documents.fixtures.make_fixtures import document_xml, docx_bytes, paragraph
from tests.fixtures.identity import Account

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
FRENCH = "Le café était très réputé; à côté, l'élève préféré répétait sa leçon. " * 30


# --- sniffing: the declared charset ------------------------------------------------------


def test_a_cp1252_page_that_declares_utf8_is_sniffed_as_html(tmp_path: Path) -> None:
    """A legacy page mislabelled ``<meta charset="utf-8">`` (common) is read fine by the HTML
    parser (_Utf8OrCp1252 falls back to cp1252), but _text_type now decodes the head as the
    declared UTF-8, sees U+FFFD everywhere and refuses it (415). Before 215f149 it was HTML."""
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Café</title></head>'
        f"<body><p>{FRENCH}</p></body></html>"
    )
    path = tmp_path / "page.html"
    path.write_bytes(page.encode("cp1252"))

    assert [block.text[:8] for block in parse(path, "text/html")] == ["Le café "]
    assert sniff_file(path, "page.html") == "text/html"


def test_a_cp1252_text_file_that_mentions_a_meta_charset_stays_text(tmp_path: Path) -> None:
    """declared_encoding is applied to any non-UTF-8 head, not only HTML: a cp1252 note that
    merely mentions ``<meta charset="utf-8">`` is refused as of unknown encoding, although
    parse_text reads it as cp1252."""
    path = tmp_path / "notes.txt"
    path.write_bytes(
        f'Pense-bête: mettre <meta charset="utf-8"> dans la page.\n{FRENCH}'.encode("cp1252")
    )

    assert sniff_file(path, "notes.txt") == "text/plain"


@pytest.mark.parametrize("label", ["hex", "base64", "zlib", "rot13", "undefined"])
def test_a_meta_charset_naming_a_non_text_codec_is_not_a_crash(tmp_path: Path, label: str) -> None:
    """declared_encoding accepts any codec Python knows, including bytes-to-bytes codecs and
    "undefined"; sniffing now decodes a non-UTF-8 head with it and raises AssertionError /
    TypeError / UnicodeError instead of a DocumentError (service.create only catches
    UnsupportedType, so the upload is a 500)."""
    path = tmp_path / "page.html"
    path.write_bytes(
        f'<html><head><meta charset="{label}"></head><body>caf\xe9</body></html>'.encode("latin-1")
    )

    with contextlib.suppress(DocumentError):
        assert sniff_file(path, "page.html") == "text/html"


async def test_uploading_a_page_with_a_bogus_charset_is_not_a_500(
    app: FastAPI, alice: Account
) -> None:
    """The same through the API: POST /documents answers 500 (AssertionError in sniffing)."""
    page = b'<html><head><meta charset="hex"></head><body><p>caf\xe9 cr\xe8me</p></body></html>'
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.post(
            "/documents",
            files={"file": ("page.html", page, "text/html")},
            headers=alice.headers,
        )

    assert answer.status_code < 500, answer.text


# --- DOCX: the package parts read to find the main part ------------------------------------


def _flag_encrypted(data: bytes, name: str) -> bytes:
    """Set the "encrypted" bit of ``name`` in its local and central headers."""
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        raw[archive.getinfo(name).header_offset + 6] |= 0x1
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        size = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + size] == name.encode():
            raw[at + 8] |= 0x1
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def test_an_encrypted_package_relationships_part_is_a_document_error(tmp_path: Path) -> None:
    """main_part opens _rels/.rels when word/document.xml is absent; an encrypted entry makes
    zipfile raise RuntimeError, which neither _stream_xml, sniffing's _directory nor parse's
    _UNREADABLE turn into a DocumentError: the upload is a 500 (sniff) and the job would be
    retried as a transient error (parse)."""
    data = docx_bytes(document_xml(paragraph("text")), main="document2.xml")
    path = tmp_path / "locked.docx"
    path.write_bytes(_flag_encrypted(data, "_rels/.rels"))

    with contextlib.suppress(DocumentError):
        sniff_file(path, "locked.docx")
    with pytest.raises(CorruptDocument):
        list(parse(path, DOCX))


# --- text: UTF-8 or cp1252 past the head -----------------------------------------------


def test_a_utf8_character_before_a_broken_byte_in_the_same_piece_keeps_the_file_utf8(
    tmp_path: Path,
) -> None:
    """_Utf8OrCp1252's rule is "a non-UTF-8 byte before any real UTF-8 character switches to
    cp1252", but it judges a whole piece: a valid "é" followed, in the same piece, by one
    damaged byte is a 1:1 tie and the file switches to cp1252 ("cafÃ©"); had "é" been one
    piece earlier it would stay UTF-8. The outcome depends on where pieces are cut."""
    path = tmp_path / "log.txt"
    path.write_bytes(b"a" * 64 + "café au lait".encode() + b" x\xff y")

    text = "".join(read_pieces(path, encoding="utf-8-sig", read_size=64))

    assert "café au lait" in text


# --- HTML: DOCTYPE internal subsets -----------------------------------------------------


def test_a_bracket_inside_a_quoted_doctype_identifier_is_not_a_subset(tmp_path: Path) -> None:
    """parse_html_declaration takes any "[" before the first ">" for an internal subset, even
    inside a quoted public id, then ends the DOCTYPE at the first "]...>" of the document:
    the text before a later "[1]" is swallowed (and with no "]" at all, the DOCTYPE itself
    becomes text and the whole page is held in memory until the end)."""
    path = tmp_path / "page.html"
    path.write_text(
        '<!DOCTYPE html PUBLIC "-//Acme//DTD HTML [draft//EN">'
        "<html><body><p>One.</p><p>See [1].</p><p>Two.</p></body></html>"
    )

    assert [block.text for block in parse(path, "text/html", ParseLimits())] == [
        "One.",
        "See [1].",
        "Two.",
    ]
