"""PDF text layer with pypdf, one page at a time; no OCR.

pypdf reads through the open file object (given a path it would read the whole file into
memory). It caches every object it resolves, so after each page we drop that page's content
streams and XObjects from its cache: memory then follows the largest page, not the file.

Paragraphs are not marked in a PDF; they are guessed per page from the lines' positions (a
gap larger than the usual line spacing) and lengths (a line well short of the page's longest
one ends its paragraph). Lines pypdf reports on one baseline (words drawn one by one, a table
row's cells) are one line. A word hyphenated at a line end is joined: always for a soft
hyphen (the standard's mark of a hyphen added by hyphenation), and for a hard hyphen when the
document so far spells the joined word and not the hyphenated one ("ef-/ficient" becomes
"efficient", "dual-/encoder" stays).
"""

from __future__ import annotations

import itertools
import logging
import re
import statistics
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

from mainsail.documents.parsing.model import Block, CorruptDocument, LimitExceeded, ParseLimits
from mainsail.documents.parsing.textio import clean, cut_pieces

log = logging.getLogger(__name__)

# What pypdf raises on a damaged or unusual file: its own errors and whatever the bytes it
# trusted lead to (an unknown stream filter is a NotImplementedError; a bad deflate stream a
# zlib.error; a bad binary field a struct.error).
_BROKEN = (
    PyPdfError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    struct.error,
    zlib.error,
)
_BROKEN_REASON = "The PDF is damaged and cannot be read."
_ENCRYPTED_REASON = "The PDF is encrypted; remove its password and upload it again."
_GAP_FACTOR = 1.5  # a gap this many times the usual line spacing ends a paragraph
_SHORT_LINE = 0.7  # a line shorter than this share of a full line ends a paragraph
_SAME_BASELINE = 1.0  # points: lines this close in height are one line
# A soft hyphen survives cleaning as a private-use mark (one the page does not hold) until
# its paragraph's lines are joined at it.
_MARKS = tuple(chr(code) for code in range(0xE000, 0xE100))
_HYPHENATED = re.compile(r"\b(\w+)-\n(\w+)")  # \b: not tried from inside every long word
_WORD = re.compile(r"\w+(?:-\w+)*")
_VOCABULARY_MAX = 200_000  # words remembered per document to judge hyphenated line ends


@dataclass(slots=True)
class _Line:
    text: str
    y: float | None


def parse_pdf(path: Path, limits: ParseLimits) -> Iterator[Block]:
    with path.open("rb") as file:
        with _reading():
            reader = _open(file)
            count = len(reader.pages)
        if count > limits.max_pages:
            raise LimitExceeded(
                f"The PDF has {count} pages; documents of up to {limits.max_pages} pages"
                " are accepted."
            )
        unreadable = 0
        words: set[str] = set()  # the document's words so far, lower case, hyphens kept
        for number in range(1, count + 1):
            read = _page_lines(reader, number)
            if read is None:
                unreadable += 1
                continue
            lines, mark = read
            paragraphs = [_soft_joined(paragraph, mark) for paragraph in _paragraphs(lines)]
            if len(words) < _VOCABULARY_MAX:
                for paragraph in paragraphs:
                    words.update(word.lower() for word in _WORD.findall(paragraph))
            for paragraph in paragraphs:
                paragraph = _join_hyphenated(paragraph, words)
                for piece in cut_pieces(paragraph, limits.max_block_chars):
                    yield Block(piece, page=number)
        if count and unreadable == count:
            raise CorruptDocument(_BROKEN_REASON)


@contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except DependencyError as exc:
        raise CorruptDocument(
            "The PDF is encrypted with a method this server cannot read."
        ) from exc
    except (*_BROKEN, RecursionError) as exc:
        raise CorruptDocument(_BROKEN_REASON) from exc


def _open(file: IO[bytes]) -> PdfReader:
    reader = PdfReader(file)
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise CorruptDocument(_ENCRYPTED_REASON)
    return reader


def _page_lines(reader: PdfReader, number: int) -> tuple[list[_Line], str] | None:
    """The page's text lines, with their height on the page when pypdf reports it, and the
    mark standing for its soft hyphens; None when the page cannot be read."""
    fragments: list[tuple[str, float]] = []

    def visit(text: str, cm: Any, tm: Any, _font: Any, _size: Any) -> None:
        if text:
            fragments.append((text, tm[4] * cm[1] + tm[5] * cm[3] + cm[5]))

    try:
        page = reader.pages[number - 1]
        text = page.extract_text(visitor_text=visit)
    except DependencyError as exc:
        raise CorruptDocument("The PDF uses a feature this server cannot read.") from exc
    except (*_BROKEN, RecursionError):
        # One unreadable page should not cost the whole document its other pages.
        log.warning("pdf_page_unreadable", extra={"page": number}, exc_info=True)
        return None
    finally:
        _forget_page(reader, number)
    mark = next((mark for mark in _MARKS if mark not in text), "")
    if "".join(fragment for fragment, _ in fragments) != text:
        return [_Line(line, None) for line in _clean(text, mark).split("\n")], mark
    return _one_per_baseline(_lines_from(fragments, mark)), mark


def _clean(text: str, mark: str) -> str:
    """``clean`` keeping soft hyphens, as ``mark``, for ``_soft_joined``."""
    return clean(text.replace("\xad", mark) if mark else text)


def _soft_joined(paragraph: str, mark: str) -> str:
    """A paragraph's lines joined where one ends in a soft hyphen (``mark``); other soft
    hyphens dropped."""
    if not mark or mark not in paragraph:
        return paragraph
    return re.sub(f"{mark}[ \t]*\n[ \t]*", "", paragraph).replace(mark, "")


def _one_per_baseline(lines: list[_Line]) -> list[_Line]:
    """Consecutive lines on one baseline made one (pypdf breaks between words drawn apart)."""
    out: list[_Line] = []
    for line in lines:
        last = out[-1] if out else None
        if (
            last is not None
            and last.y is not None
            and line.y is not None
            and abs(last.y - line.y) < _SAME_BASELINE
            and last.text.strip()
            and line.text.strip()
        ):
            last.text = f"{last.text.rstrip()} {line.text.lstrip()}"
        else:
            out.append(line)
    return out


def _join_hyphenated(paragraph: str, words: set[str]) -> str:
    """A word hyphenated across a line end joined, when the document spells it whole and not
    with the hyphen."""

    def join(match: re.Match[str]) -> str:
        head, tail = match.group(1), match.group(2)
        whole = (head + tail).lower()
        if whole in words and f"{head}-{tail}".lower() not in words:
            return head + tail
        return match.group(0)

    return _HYPHENATED.sub(join, paragraph) if "-\n" in paragraph else paragraph


def _lines_from(fragments: list[tuple[str, float]], mark: str) -> list[_Line]:
    lines: list[_Line] = []
    current: list[str] = []
    y: float | None = None
    for text, fragment_y in fragments:
        for index, part in enumerate(_clean(text, mark).split("\n")):
            if index:
                lines.append(_Line("".join(current), y))
                current, y = [], None
            if part and y is None:
                y = fragment_y
            current.append(part)
    lines.append(_Line("".join(current), y))
    return lines


def _paragraphs(lines: list[_Line]) -> Iterator[str]:
    """Lines grouped into paragraphs by blank lines, vertical gaps and short lines."""
    lines = [_Line(line.text.rstrip(), line.y) for line in lines]
    full = _full_line_length(lines)
    gaps = [
        above.y - below.y
        for above, below in itertools.pairwise(lines)
        if above.y is not None and below.y is not None and above.y > below.y
    ]
    spacing = statistics.median_low(gaps) if gaps else None
    paragraph: list[str] = []
    previous: _Line | None = None
    for line in lines:
        if not line.text.strip():
            if paragraph:
                yield "\n".join(paragraph)
            paragraph, previous = [], None
            continue
        if paragraph and previous is not None and _breaks(previous, line, spacing, full):
            yield "\n".join(paragraph)
            paragraph = []
        paragraph.append(line.text)
        previous = line
    if paragraph:
        yield "\n".join(paragraph)


def _full_line_length(lines: list[_Line]) -> int:
    """The length of a full line of body text: a high percentile, so that a title or a
    full-width line above two columns does not make every column line look short."""
    lengths = sorted(len(line.text) for line in lines if line.text.strip())
    return lengths[int(0.8 * (len(lengths) - 1))] if lengths else 0


def _breaks(previous: _Line, line: _Line, spacing: float | None, full: int) -> bool:
    if len(previous.text.strip()) < _SHORT_LINE * full:
        return True
    if spacing is None or previous.y is None or line.y is None:
        return False
    gap = previous.y - line.y
    return gap < 0 or gap > _GAP_FACTOR * spacing  # a new column, or a paragraph gap


def _forget_page(reader: PdfReader, number: int) -> None:
    """Drop the page's content streams and XObjects from pypdf's object cache."""
    try:
        page = reader.pages[number - 1]
        refs = _refs(page.raw_get("/Contents")) if "/Contents" in page else []
        resources = page.get("/Resources")
        if isinstance(resources, DictionaryObject) and "/XObject" in resources:
            xobjects = resources["/XObject"]
            if isinstance(xobjects, DictionaryObject):
                refs += [xobjects.raw_get(name) for name in xobjects]
    except (*_BROKEN, RecursionError):
        return
    for ref in refs:
        if isinstance(ref, IndirectObject):
            reader.resolved_objects.pop((ref.generation, ref.idnum), None)


def _refs(value: Any) -> list[Any]:
    if isinstance(value, IndirectObject):
        return [value]
    if isinstance(value, ArrayObject):
        return list(value)  # the list itself holds the references, unresolved
    return []
