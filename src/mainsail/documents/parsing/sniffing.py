"""What a file is, from its bytes: the client's content type and file name are never trusted.

The name only breaks a tie the bytes leave open: a text file called ``.md`` is Markdown.
"""

from __future__ import annotations

import codecs
import re
import struct
import zipfile
from pathlib import Path, PurePosixPath

from mainsail.documents.parsing.docx import check_entry_count, main_part
from mainsail.documents.parsing.htmldoc import declared_encoding
from mainsail.documents.parsing.model import (
    APPLICATION_DOCX,
    APPLICATION_PDF,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    DocumentError,
    ParseLimits,
    UnsupportedType,
)
from mainsail.documents.parsing.textio import detect_encoding, looks_binary, mostly_undecodable

HEAD_SIZE = 8192

_ACCEPTED = "upload text, Markdown, HTML, PDF or Word (DOCX) documents"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG images"),
    (b"\xff\xd8\xff", "JPEG images"),
    (b"GIF87a", "GIF images"),
    (b"GIF89a", "GIF images"),
    (b"II*\x00", "TIFF images"),
    (b"MM\x00*", "TIFF images"),
    (b"RIFF", "RIFF media files (WebP, WAV, AVI)"),
    (b"\x7fELF", "Executable programs"),
    (b"\xfe\xed\xfa\xce", "Executable programs"),
    (b"\xfe\xed\xfa\xcf", "Executable programs"),
    (b"\xce\xfa\xed\xfe", "Executable programs"),
    (b"\xcf\xfa\xed\xfe", "Executable programs"),
    (b"\xca\xfe\xba\xbe", "Executable programs"),
    (b"\x00asm", "WebAssembly modules"),
    (b"\x1f\x8b", "Gzip archives"),
    (b"\xfd7zXZ\x00", "XZ archives"),
    (b"\x28\xb5\x2f\xfd", "Zstandard archives"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archives"),
    (b"Rar!\x1a\x07", "RAR archives"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Legacy or password-protected Office files"),
    (b"{\\rtf", "RTF documents"),
    (b"%!PS", "PostScript documents"),
    (b"SQLite format 3\x00", "SQLite databases"),
    (b"OggS", "Ogg media files"),
    (b"fLaC", "FLAC audio files"),
    (b"\x1aE\xdf\xa3", "Matroska and WebM videos"),
)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_MARKDOWN_NAMES = frozenset({".md", ".markdown", ".mdown", ".mkd"})
_HTML_NAMES = frozenset({".html", ".htm", ".xhtml"})
_HTML_START = re.compile(
    r"\A\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)[\s>/]",
    re.IGNORECASE | re.DOTALL,
)
_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_MARKDOWN_SIGNS = (
    re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE),  # fenced code
    re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),  # [link](target)
    re.compile(r"^ {0,3}[-*+][ \t]+\S", re.MULTILINE),  # bullet list
    re.compile(r"\*\*\S[^*\n]*\*\*|__\S[^_\n]*__"),  # strong emphasis
    # table delimiter row (spaces and tabs only: "\s" crossed lines, cubic on blank lines)
    re.compile(r"^[ \t]*(?:\|[ \t]*)?:?-{3,}:?[ \t]*\|", re.MULTILINE),
)
# Entries that tell other zip-based formats apart (ODF and EPUB name their type in "mimetype").
_ZIP_FORMATS = (
    ("xl/", "Excel workbooks"),
    ("ppt/", "PowerPoint presentations"),
    ("mimetype", "OpenDocument and EPUB files"),
    ("META-INF/MANIFEST.MF", "Java archives"),
)


def sniff(head: bytes, filename: str | None = None) -> str:
    """The content type of a file from its first bytes (pass at least the first 8 KiB).

    A zip is a DOCX when the head already shows Word parts; ``sniff_file`` reads the zip's
    central directory instead, which settles archives whose head is not enough.
    Raises UnsupportedType for anything we do not parse.
    """
    if _is_pdf(head):
        return APPLICATION_PDF
    if head.startswith(_ZIP):
        return _zip_from_names(_local_names(head), head=head)
    _refuse_known_binary(head)
    return _text_type(head, filename)


def sniff_file(path: Path, filename: str | None = None) -> str:
    """Like ``sniff``, from the file itself; a zip is judged by its central directory."""
    with path.open("rb") as file:
        head = file.read(HEAD_SIZE)
    if not head.startswith(_ZIP):
        return sniff(head, filename)
    directory = _directory(path)
    if directory is None:  # not a readable archive: the head is all there is to go on
        return sniff(head, filename)
    names, main = directory
    if main is not None:
        return APPLICATION_DOCX
    return _zip_from_names(names, head=b"")


def _is_pdf(head: bytes) -> bool:
    # Readers accept the header anywhere in the first KiB; we accept it after whitespace only,
    # so that a text which merely mentions "%PDF-" stays a text.
    start = head.find(b"%PDF-", 0, 1024)
    return start >= 0 and not head[:start].strip(b" \t\r\n\x00\xef\xbb\xbf")


# Signatures of formats written as text: a byte order mark or blank lines may come first.
_TEXT_MAGIC = (b"{\\rtf", b"%!PS")


def _refuse_known_binary(head: bytes) -> None:
    trimmed = head.lstrip(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    for magic, description in _MAGIC:
        if head.startswith(magic) or (magic in _TEXT_MAGIC and trimmed.startswith(magic)):
            raise UnsupportedType(f"{description} are not supported; {_ACCEPTED}.")
    if head[4:8] == b"ftyp":
        raise UnsupportedType(f"Video, audio and HEIF image files are not supported; {_ACCEPTED}.")
    if head.startswith(b"MZ") and b"\x00" in head[:64]:
        raise UnsupportedType(f"Executable programs are not supported; {_ACCEPTED}.")
    if (
        head.startswith(b"ID3")
        and head[3:4] in (b"\x02", b"\x03", b"\x04")
        and head[4:5] == b"\x00"
    ):
        raise UnsupportedType(f"MP3 audio files are not supported; {_ACCEPTED}.")
    if head[257:262] == b"ustar":
        raise UnsupportedType(f"Tar archives are not supported; {_ACCEPTED}.")


def _text_type(head: bytes, filename: str | None) -> str:
    encoding = detect_encoding(head)
    declared = declared_encoding(head) if encoding == "cp1252" else None
    if declared and declared != "utf-8-sig":
        # Not UTF-8: a page that names its charset is read in it, as the HTML parser will read
        # it (Shift_JIS or GBK bytes read as cp1252 look like binary), if it reads as text.
        sample = codecs.getincrementaldecoder(declared)(errors="replace").decode(head)
        encoding = encoding if looks_binary(sample) else declared
    if encoding is None:
        raise UnsupportedType(f"Binary files are not supported; {_ACCEPTED}.")
    text = codecs.getincrementaldecoder(encoding)(errors="replace").decode(head, final=False)
    if looks_binary(text):
        if mostly_undecodable(text):
            raise UnsupportedType(
                "The text's encoding could not be recognized; save it as UTF-8 and upload it again."
            )
        raise UnsupportedType(f"Binary files are not supported; {_ACCEPTED}.")
    suffix = _suffix(filename)
    if _HTML_START.match(text) or (suffix in _HTML_NAMES and text.lstrip().startswith("<")):
        return TEXT_HTML
    if suffix in _MARKDOWN_NAMES or _looks_like_markdown(text):
        return TEXT_MARKDOWN
    return TEXT_PLAIN


def _looks_like_markdown(text: str) -> bool:
    """ATX headings, and either one opens the text or some other Markdown is there too."""
    if not _ATX_HEADING.search(text):
        return False
    if _ATX_HEADING.match(text.lstrip("\n")):
        return True
    return any(sign.search(text) for sign in _MARKDOWN_SIGNS)


def _suffix(filename: str | None) -> str:
    if not filename:
        return ""
    return PurePosixPath(filename.replace("\\", "/")).suffix.lower()


# --- zip archives -----------------------------------------------------------------------


def _zip_from_names(names: list[str], *, head: bytes) -> str:
    """DOCX when the archive holds Word's main part; any other zip is refused."""
    if "word/document.xml" in names or b"word/document.xml" in head:
        return APPLICATION_DOCX
    for prefix, description in _ZIP_FORMATS:
        if any(name.startswith(prefix) for name in names):
            raise UnsupportedType(f"{description} are not supported; {_ACCEPTED}.")
    if head and any(name.startswith("word/") for name in names):
        return APPLICATION_DOCX  # the main part lies past the head; parsing will check it
    raise UnsupportedType(f"Zip archives are not supported; {_ACCEPTED}.")


def _local_names(head: bytes) -> list[str]:
    """Entry names from the local headers that fit in ``head``, walking entry to entry."""
    names: list[str] = []
    offset = 0
    while head.startswith(b"PK\x03\x04", offset) and offset + 30 <= len(head):
        flags, compressed, name_size, extra_size = struct.unpack_from(
            "<2xH10xL4xHH", head, offset + 4
        )
        name = head[offset + 30 : offset + 30 + name_size]
        names.append(name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace"))
        if flags & 0x8 and compressed == 0:
            break  # the size follows the data: the next header cannot be found from here
        offset += 30 + name_size + extra_size + compressed
    return names


def _directory(path: Path) -> tuple[list[str], str | None] | None:
    """The archive's entry names and its Word main part, if it has one."""
    try:
        with path.open("rb") as file:
            limits = ParseLimits()
            check_entry_count(file, limits)
            with zipfile.ZipFile(file) as archive:
                names = archive.namelist()
                try:
                    main = main_part(archive, limits)
                except DocumentError:
                    main = None
                return names, main
    except (DocumentError, zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
        return None
