"""Stored files turned into a stream of text blocks, never read whole into memory.

``sniff``/``sniff_file`` say what a file is from its bytes; ``parse`` yields its ``Block``s one
at a time for text, Markdown, HTML, PDF (text layer) and DOCX. Failures are ``DocumentError``s
whose ``reason`` can be shown to the uploader: ``UnsupportedType`` for files we do not read,
``CorruptDocument`` (and its ``LimitExceeded``) for files we cannot or will not read.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from mainsail.documents.parsing.docx import parse_docx
from mainsail.documents.parsing.htmldoc import parse_html
from mainsail.documents.parsing.markdown import parse_markdown
from mainsail.documents.parsing.model import (
    APPLICATION_DOCX,
    APPLICATION_PDF,
    SUPPORTED,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    Block,
    CorruptDocument,
    DocumentError,
    LimitExceeded,
    ParseLimits,
    UnsupportedType,
)
from mainsail.documents.parsing.pdf import parse_pdf
from mainsail.documents.parsing.plaintext import parse_text
from mainsail.documents.parsing.sniffing import sniff, sniff_file

__all__ = [
    "SUPPORTED",
    "Block",
    "CorruptDocument",
    "DocumentError",
    "LimitExceeded",
    "ParseLimits",
    "UnsupportedType",
    "parse",
    "sniff",
    "sniff_file",
]

log = logging.getLogger(__name__)

# What a parser raises when a file surprises it and no DocumentError was made of it. Reading the
# same bytes again raises the same way, so the document fails once with a reason instead of
# being retried; the traceback goes to the log. OSError (the storage) and MemoryError are not
# here: they can pass.
_UNREADABLE = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    RecursionError,
    struct.error,
    zlib.error,
)
_UNREADABLE_REASON = "The file could not be read: it is damaged or uses a feature we do not read."

_PARSERS: dict[str, Callable[[Path, ParseLimits], Iterator[Block]]] = {
    TEXT_PLAIN: parse_text,
    TEXT_MARKDOWN: parse_markdown,
    TEXT_HTML: parse_html,
    APPLICATION_PDF: parse_pdf,
    APPLICATION_DOCX: parse_docx,
}


def parse(
    path: Path, content_type: str, limits: ParseLimits = ParseLimits()
) -> Generator[Block, None, None]:
    """The file's blocks, read incrementally.

    A generator: nothing is read until the first block is asked for, errors
    (``UnsupportedType``, ``CorruptDocument``) are raised while iterating, and ``close()``
    releases the open file of a parse abandoned halfway.
    """
    parser = _PARSERS.get(content_type.split(";")[0].strip().lower())
    if parser is None:
        raise UnsupportedType(f"Files of type {content_type!r} are not supported.")
    try:
        yield from parser(path, limits)
    except DocumentError:
        raise
    except _UNREADABLE as exc:
        log.warning("document_unreadable", extra={"content_type": content_type}, exc_info=True)
        raise CorruptDocument(_UNREADABLE_REASON) from exc
