"""What parsing produces (blocks), what bounds it (limits) and how it fails (errors)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
APPLICATION_DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

SUPPORTED: dict[str, str] = {
    TEXT_PLAIN: "text",
    TEXT_MARKDOWN: "markdown",
    TEXT_HTML: "html",
    APPLICATION_PDF: "pdf",
    APPLICATION_DOCX: "docx",
}


@dataclass(frozen=True, slots=True)
class Block:
    """One structural unit of a document: a paragraph, a list, a table row, a heading..."""

    text: str
    page: int | None = None  # 1-based, PDF only
    heading: tuple[str, ...] = ()  # the heading path in force; a heading's own path ends with it
    kind: str = "paragraph"  # heading | paragraph | list | table | code | quote | metadata


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_pages: int = 5000
    max_zip_entries: int = 10_000  # DOCX
    max_uncompressed_bytes: int = 512 * MiB  # DOCX: total of the entries actually read
    max_compression_ratio: float = 200.0  # DOCX: per entry, for entries past a small floor
    max_block_chars: int = 100_000  # longer unstructured text is cut into pieces of this size
    read_size: int = 64 * 1024  # bytes per read of a text file
    max_markup_chars: int = 8 * MiB  # HTML: one tag, comment or script the parser must hold


class DocumentError(Exception):
    """A document we cannot turn into text; ``reason`` is a sentence fit for the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedType(DocumentError):
    """Not a type we parse."""


class CorruptDocument(DocumentError):
    """A supported type whose content cannot be read (broken, encrypted, disguised, hostile)."""


class LimitExceeded(CorruptDocument):
    """Readable in principle but past a limit (pages, zip entries, expanded size)."""
