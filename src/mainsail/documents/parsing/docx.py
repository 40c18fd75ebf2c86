"""DOCX without python-docx: the zip's directory is checked, then the XML is streamed.

Zip bombs are refused twice: from the directory (entry count, declared sizes, compression
ratios) before anything is inflated, and while reading, by counting the bytes that actually
come out, as declared sizes can lie. The XML goes through expat event by event (nothing is
kept but the paragraph in progress), and any DOCTYPE is refused before its first entity could
be declared, let alone expanded.
"""

from __future__ import annotations

import posixpath
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from xml.parsers import expat

from mainsail.documents.parsing.model import (
    Block,
    CorruptDocument,
    DocumentError,
    LimitExceeded,
    MiB,
    ParseLimits,
)
from mainsail.documents.parsing.textio import clean, cut_pieces, word_end

DOCUMENT_PART = "word/document.xml"
STYLES_NAME = "styles.xml"  # beside the main part
# Parts the main part's relationships name whose text belongs to the document, read after it.
_NOTES = ("/footnotes", "/endnotes")
# Notes that are no note: the rule above the notes and its continuation.
_NOT_NOTES = frozenset({"separator", "continuationSeparator", "continuationNotice"})
# A package names its main part in its relationships (Word sometimes writes
# word/document2.xml), and the part's content type says it is a Word document.
_PACKAGE_RELS = "_rels/.rels"
_CONTENT_TYPES = "[Content_Types].xml"
_MAX_PACKAGE_PART = 1 * MiB  # either of the two above
_W = frozenset(
    {
        "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
        "http://purl.oclc.org/ooxml/wordprocessingml/main",  # Strict OOXML
    }
)
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
# An equation's text (Office Math): read as text too, so "m=1" does not vanish from a sentence.
_MATH_TEXT = "http://schemas.openxmlformats.org/officeDocument/2006/math t"
# Its structure, written out in line as a reader would type it: a fraction "(a+b)/c", a
# superscript "10^(-6)", a subscript "x_i", a delimiter's characters "(...)" (Word draws
# them, they are not text). Read as bare text, "10^-6 mm" was "10-6 mm" and "mλ/a" "mλa".
_MATH = "http://schemas.openxmlformats.org/officeDocument/2006/math "
_MATH_GROUPS = {"num": "", "den": "/", "sup": "^", "sub": "_"}
# Entries smaller than this cannot be bombs, whatever their ratio (tiny parts compress well).
_RATIO_FLOOR = 1 * MiB
# Subtrees that are not the document's current text or properties: alternative renderings,
# moved-away or deleted text, field codes, and the old properties of a tracked change.
_SKIPPED = frozenset(
    {f"{_MC} Fallback", "moveFrom", "delText", "instrText", "pPrChange", "rPrChange"}
)
_HEADING_NAME = re.compile(r"heading ([1-9])")
_HEADING_ID = re.compile(r"Heading([1-9])")
_BROKEN_ZIP = "The DOCX file is damaged (its zip archive cannot be read)."
_BOMB = "The DOCX file expands to far more data than it holds (a zip bomb)."


class _RefusedDoctype(Exception):
    pass


def parse_docx(path: Path, limits: ParseLimits) -> Iterator[Block]:
    with path.open("rb") as file:
        check_entry_count(file, limits)
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise CorruptDocument(_BROKEN_ZIP) from exc
        with archive:
            document, styles_part, notes = _check_directory(archive, limits)
            budget = _Budget(limits.max_uncompressed_bytes)
            styles = _Styles()
            if styles_part is not None:
                for _ in _stream_xml(archive, styles_part, styles, limits, budget):
                    pass
            # Footnotes and endnotes come after the body, under no heading of its own.
            for part in (document, *notes):
                body = _Body(styles, limits.max_block_chars)
                for _ in _stream_xml(archive, part, body, limits, budget):
                    yield from body.drain()
                body.finish()
                yield from body.drain()


# --- the zip directory ------------------------------------------------------------------


def check_entry_count(file: IO[bytes], limits: ParseLimits) -> None:
    """Count the central directory's entries, up to one past the limit, before zipfile lists
    every entry in memory. The end record's own count is not trusted: zipfile reads the
    whole directory whatever it says."""
    size = file.seek(0, 2)
    tail_size = min(size, 22 + 65535)
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) - end < 22:
        raise CorruptDocument(_BROKEN_ZIP)
    count, directory_size = struct.unpack_from("<HI", tail, end + 10)
    # Where the directory really starts (as zipfile finds it: data may precede the archive).
    directory = size - tail_size + end - directory_size
    if count == 0xFFFF or directory_size == 0xFFFFFFFF:  # Zip64: the real figures are there
        locator = end - 20
        if locator < 0 or tail[locator : locator + 4] != b"PK\x06\x07":
            raise CorruptDocument(_BROKEN_ZIP)
        record_offset = struct.unpack_from("<Q", tail, locator + 8)[0]
        file.seek(record_offset)
        record = file.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            raise CorruptDocument(_BROKEN_ZIP)
        count, directory_size = struct.unpack_from("<QQ", record, 32)
        directory = size - tail_size + locator - 56 - directory_size
    count = max(count, _walk_directory(file, directory, limits.max_zip_entries))
    file.seek(0)
    if count > limits.max_zip_entries:
        raise LimitExceeded(
            f"The DOCX file has {count} zip entries; at most {limits.max_zip_entries} are accepted."
        )


def _walk_directory(file: IO[bytes], start: int, limit: int) -> int:
    """Central directory headers from ``start``, counted up to ``limit + 1``."""
    if start < 0:
        return 0
    file.seek(start)
    count = 0
    while count <= limit:
        head = file.read(46)
        if len(head) < 46 or head[:4] != b"PK\x01\x02":
            break
        name, extra, comment = struct.unpack_from("<HHH", head, 28)
        file.seek(name + extra + comment, 1)
        count += 1
    return count


def _check_directory(
    archive: zipfile.ZipFile, limits: ParseLimits
) -> tuple[zipfile.ZipInfo, zipfile.ZipInfo | None, list[zipfile.ZipInfo]]:
    """The main part, its styles and its notes parts (footnotes, endnotes), checked."""
    entries = archive.infolist()
    if len(entries) > limits.max_zip_entries:
        raise LimitExceeded(
            f"The DOCX file has {len(entries)} zip entries; at most {limits.max_zip_entries}"
            " are accepted."
        )
    for entry in entries:
        if _too_compressed(entry.file_size, entry.compress_size, limits):
            raise LimitExceeded(_BOMB)
    by_name = {entry.filename: entry for entry in entries}
    name = main_part(archive, limits)
    document = by_name.get(name) if name is not None else None
    if name is None or document is None:
        raise CorruptDocument("The file is not a Word document (it has no main document part).")
    folder = posixpath.dirname(name)
    styles = by_name.get(posixpath.join(folder, STYLES_NAME))
    relationships = posixpath.join(folder, "_rels", posixpath.basename(name) + ".rels")
    try:  # every hyperlink is a relationship too: larger than the package's own parts
        related = _package_elements(
            archive,
            relationships,
            "Relationship",
            limits,
            cap=limits.max_uncompressed_bytes,
            keep=lambda attrs: attrs.get("Type", "").endswith(_NOTES),
        )
    except DocumentError:  # unreadable: the notes are left out, the body is still read
        related = []
    targets = [
        _part_name(folder, attrs.get("Target", ""))
        for attrs in related
        if attrs.get("Type", "").endswith(_NOTES) and attrs.get("TargetMode") != "External"
    ]
    notes = [by_name[target] for target in dict.fromkeys(targets) if target in by_name]
    read = [entry for entry in (document, styles, *notes) if entry is not None]
    if any(entry.flag_bits & 0x1 for entry in read):
        raise CorruptDocument("The DOCX file is encrypted.")
    if sum(entry.file_size for entry in read) > limits.max_uncompressed_bytes:
        raise LimitExceeded(_BOMB)
    return document, styles, notes


def _part_name(folder: str, target: str) -> str:
    """The part a relationship's target names: relative to the source part's folder, or
    absolute (from the package's root) when it starts with a slash."""
    if target.startswith("/"):
        return posixpath.normpath(target.lstrip("/"))
    return posixpath.normpath(posixpath.join(folder, target))


def main_part(archive: zipfile.ZipFile, limits: ParseLimits) -> str | None:
    """The name of the package's Word main part: ``word/document.xml`` when it is there, else
    the part the package relationships name whose content type is a Word document's."""
    names = set(archive.namelist())
    if DOCUMENT_PART in names:
        return DOCUMENT_PART
    relationships = _package_elements(archive, _PACKAGE_RELS, "Relationship", limits)
    targets = [
        posixpath.normpath(attrs.get("Target", "").lstrip("/"))
        for attrs in relationships
        if attrs.get("Type", "").endswith("/officeDocument")
        and attrs.get("TargetMode") != "External"
    ]
    target = next((name for name in targets if name in names), None)
    if target is None:
        return None
    overrides = _package_elements(archive, _CONTENT_TYPES, "Override", limits)
    for attrs in overrides:
        if attrs.get("PartName", "").lstrip("/") == target:
            kind = attrs.get("ContentType", "")
            return target if "word" in kind and kind.endswith(".main+xml") else None
    return None


def _package_elements(
    archive: zipfile.ZipFile,
    name: str,
    element: str,
    limits: ParseLimits,
    *,
    cap: int = _MAX_PACKAGE_PART,
    keep: Callable[[dict[str, str]], bool] | None = None,
) -> list[dict[str, str]]:
    """The attributes of each ``element`` (that ``keep`` keeps) in a package part of at most
    ``cap`` bytes (none when it is absent)."""
    try:
        entry = archive.getinfo(name)
    except KeyError:
        return []
    if entry.file_size > cap:
        raise LimitExceeded(_BOMB)
    handler = _Collect(element, keep)
    for _ in _stream_xml(archive, entry, handler, limits, _Budget(cap)):
        pass
    return handler.found


class _Collect:
    def __init__(self, element: str, keep: Callable[[dict[str, str]], bool] | None) -> None:
        self.element = element
        self.keep = keep
        self.found: list[dict[str, str]] = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name.rpartition(" ")[2] == self.element and (self.keep is None or self.keep(attrs)):
            self.found.append(attrs)

    def end(self, name: str) -> None:
        pass

    def text(self, data: str) -> None:
        pass


def _too_compressed(expanded: int, compressed: int, limits: ParseLimits) -> bool:
    return expanded > _RATIO_FLOOR and expanded > limits.max_compression_ratio * max(compressed, 1)


@dataclass(slots=True)
class _Budget:
    """Bytes that may still come out of the archive, counted as they actually do."""

    left: int

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise LimitExceeded(_BOMB)


# --- streaming XML ----------------------------------------------------------------------


class _Handler(Protocol):
    """Receives element events with WordprocessingML names reduced to their local part."""

    def start(self, name: str, attrs: dict[str, str]) -> None: ...
    def end(self, name: str) -> None: ...
    def text(self, data: str) -> None: ...


def _stream_xml(
    archive: zipfile.ZipFile,
    entry: zipfile.ZipInfo,
    handler: _Handler,
    limits: ParseLimits,
    budget: _Budget,
) -> Iterator[None]:
    """Feed the entry to ``handler`` in pieces, yielding after each piece."""
    parser = _expat_parser(handler)
    read = 0
    try:
        with archive.open(entry) as member:
            while chunk := member.read(limits.read_size):
                read += len(chunk)
                budget.spend(len(chunk))
                if _too_compressed(read, entry.compress_size, limits):
                    raise LimitExceeded(_BOMB)
                parser.Parse(chunk, False)
                yield
        parser.Parse(b"", True)
    except _RefusedDoctype as exc:
        raise CorruptDocument("The document's XML declares a DOCTYPE, which is refused.") from exc
    except expat.ExpatError as exc:
        raise CorruptDocument("The document's XML is malformed.") from exc
    except RuntimeError as exc:  # zipfile: an encrypted entry needs a password
        raise CorruptDocument("The DOCX file is encrypted.") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise CorruptDocument(_BROKEN_ZIP) from exc
    yield


def _expat_parser(handler: _Handler) -> expat.XMLParserType:
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True

    def refuse(*_args: object) -> None:
        raise _RefusedDoctype

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = lambda name, attrs: handler.start(
        _local(name), {_local(key): value for key, value in attrs.items()}
    )
    parser.EndElementHandler = lambda name: handler.end(_local(name))
    parser.CharacterDataHandler = handler.text
    return parser


def _local(name: str) -> str:
    namespace, _, local = name.rpartition(" ")
    return local if namespace in _W else name


# --- styles: which paragraph styles are headings, lists, code ---------------------------


@dataclass(slots=True)
class _Style:
    name: str = ""
    based_on: str | None = None
    outline: int | None = None


class _Styles:
    def __init__(self) -> None:
        self.styles: dict[str, _Style] = {}
        self.current: _Style | None = None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if name == "style":
            is_paragraph = attrs.get("type", "paragraph") == "paragraph"
            self.current = _Style() if is_paragraph else None
            if self.current is not None:
                self.styles[attrs.get("styleId", "")] = self.current
        elif self.current is not None:
            value = attrs.get("val", "")
            if name == "name":
                self.current.name = value.lower()
            elif name == "basedOn":
                self.current.based_on = value
            elif name == "outlineLvl" and value.isdigit():
                self.current.outline = int(value)

    def end(self, name: str) -> None:
        if name == "style":
            self.current = None

    def text(self, data: str) -> None:
        pass

    def level(self, style_id: str) -> int | None:
        """The heading level of a style (Title is 0), following ``basedOn`` a few steps."""
        for _ in range(10):
            style = self.styles.get(style_id)
            if style is None:
                return _level_from_id(style_id)
            if style.name == "title":
                return 0
            if match := _HEADING_NAME.fullmatch(style.name):
                return int(match.group(1))
            if style.outline is not None:  # 9 is body text (Word's "TOC Heading"): not inherited
                return style.outline + 1 if style.outline < 9 else None
            if not style.based_on:
                return None
            style_id = style.based_on
        return None

    def kind(self, style_id: str) -> str | None:
        name = self.styles[style_id].name if style_id in self.styles else style_id.lower()
        if "list" in name:
            return "list"
        if any(word in name for word in ("code", "preformatted", "source", "macro")):
            return "code"
        if "quote" in name:
            return "quote"
        return None


def _level_from_id(style_id: str) -> int | None:
    if style_id == "Title":
        return 0
    match = _HEADING_ID.fullmatch(style_id)
    return int(match.group(1)) if match else None


# --- the body: paragraphs and table rows -------------------------------------------------


@dataclass(slots=True)
class _Paragraph:
    parts: list[str] = field(default_factory=list)
    size: int = 0
    style: str = ""
    outline: int | None = None
    numbered: bool = False


class _Body:
    def __init__(self, styles: _Styles, limit: int) -> None:
        self.styles = styles
        self.limit = limit
        self.ready: list[Block] = []
        self.paragraphs: list[_Paragraph] = []
        self.headings: list[tuple[int, str]] = []
        self.skipping = 0
        self.runs = 0
        self.in_text = 0
        self.tables = 0
        self.cells: list[str] | None = None  # the outermost table's row in progress
        self.cell: list[str] = []
        self.math: list[str] = []  # the Office Math elements open, innermost last
        self.groups: list[int] = []  # where each open fraction part or script began
        self.delimiters: list[list[str]] = []  # begin, separator, end, items so far
        self.events: dict[str, Callable[[dict[str, str]], None]] = {
            "p": self._start_paragraph,
            "pStyle": self._style,
            "outlineLvl": self._outline,
            "numPr": self._numbered,
            "tbl": self._start_table,
            "tr": self._start_row,
            "tc": self._start_cell,
        }

    def drain(self) -> Iterator[Block]:
        ready, self.ready = self.ready, []
        yield from ready

    def finish(self) -> None:
        while self.paragraphs:
            self._end_paragraph()
        self._end_row()

    def start(self, name: str, attrs: dict[str, str]) -> None:
        if (
            self.skipping
            or name in _SKIPPED
            or (name in ("footnote", "endnote") and attrs.get("type") in _NOT_NOTES)
        ):
            self.skipping += 1
        elif name == "t" or name == _MATH_TEXT:
            self.in_text += 1
        elif name == "r":
            self.runs += 1
        elif self.runs and name in ("tab", "br", "cr", "noBreakHyphen"):
            self._add({"tab": "\t", "noBreakHyphen": "-"}.get(name, "\n"))
        elif name.startswith(_MATH):
            self._start_math(name[len(_MATH) :], attrs)
        elif event := self.events.get(name):
            event(attrs)

    def end(self, name: str) -> None:
        if self.skipping:
            self.skipping -= 1
        elif name == "t" or name == _MATH_TEXT:
            self.in_text = max(0, self.in_text - 1)
        elif name == "r":
            self.runs = max(0, self.runs - 1)
        elif name.startswith(_MATH):
            self._end_math(name[len(_MATH) :])
        elif name == "p":
            self._end_paragraph()
        elif name == "tc":
            self._end_cell()
        elif name == "tr" and self.tables == 1:
            self._end_row()
        elif name == "tbl":
            self.tables = max(0, self.tables - 1)
            if self.tables == 0:
                self._end_row()

    def text(self, data: str) -> None:
        if self.in_text and not self.skipping:
            self._add(data)

    # --- paragraphs ---------------------------------------------------------------------

    def _start_paragraph(self, _attrs: dict[str, str]) -> None:
        self.paragraphs.append(_Paragraph())

    def _style(self, attrs: dict[str, str]) -> None:
        if self.paragraphs:
            self.paragraphs[-1].style = attrs.get("val", "")

    def _outline(self, attrs: dict[str, str]) -> None:
        value = attrs.get("val", "")
        if self.paragraphs and value.isdigit():  # 9 and above: body text, whatever the style
            self.paragraphs[-1].outline = int(value)

    def _numbered(self, _attrs: dict[str, str]) -> None:
        if self.paragraphs:
            self.paragraphs[-1].numbered = True

    def _add(self, text: str) -> None:
        if not self.paragraphs:
            return
        paragraph = self.paragraphs[-1]
        paragraph.parts.append(text)
        paragraph.size += len(text)
        if paragraph.size > self.limit:  # spill what is there, keep the paragraph open
            text = "".join(paragraph.parts)
            # A word the last read cut short stays open: only whole words are emitted.
            end = word_end(text, limit=self.limit) if not self.tables else len(text)
            paragraph.parts = [text[:end]]
            self._emit_text(self._take(paragraph), kind=self._kind(paragraph))
            if end < len(text):
                paragraph.parts.append(text[end:])
                paragraph.size = len(text) - end

    def _end_paragraph(self) -> None:
        if not self.paragraphs:
            return
        paragraph = self.paragraphs.pop()
        text = self._take(paragraph)
        if self.tables:
            if text.strip():
                self.cell.append(" ".join(text.split()))
            return
        level = self._level(paragraph)
        if level is not None and text.strip():
            title = " ".join(text.split())
            while self.headings and self.headings[-1][0] >= level:
                self.headings.pop()
            self.headings.append((level, title))
            self._emit_text(title, kind="heading")
        else:
            self._emit_text(text, kind=self._kind(paragraph))

    def _level(self, paragraph: _Paragraph) -> int | None:
        if paragraph.outline is not None:
            return paragraph.outline + 1 if paragraph.outline < 9 else None
        return self.styles.level(paragraph.style) if paragraph.style else None

    def _kind(self, paragraph: _Paragraph) -> str:
        if paragraph.numbered:
            return "list"
        return (self.styles.kind(paragraph.style) if paragraph.style else None) or "paragraph"

    @staticmethod
    def _take(paragraph: _Paragraph) -> str:
        text = clean("".join(paragraph.parts))
        paragraph.parts.clear()
        paragraph.size = 0
        return text

    def _emit_text(self, text: str, *, kind: str) -> None:
        if self.tables:
            self.cell.append(" ".join(text.split()))
            self._end_row()  # a huge cell: what the row has so far becomes a block
            return
        path = tuple(title for _, title in self.headings)
        for piece in cut_pieces(text, self.limit):
            self.ready.append(Block(piece, heading=path, kind=kind))

    # --- equations (Office Math) ---------------------------------------------------------

    def _start_math(self, name: str, attrs: dict[str, str]) -> None:
        parent = self.math[-1] if self.math else ""
        self.math.append(name)
        if name in _MATH_GROUPS:
            self._add(_MATH_GROUPS[name])
            self.groups.append(len(self.paragraphs[-1].parts) if self.paragraphs else 0)
        elif name == "d":
            self.delimiters.append(["(", "|", ")", ""])
        elif name in ("begChr", "sepChr", "endChr") and self.delimiters and parent == "dPr":
            slot = ("begChr", "sepChr", "endChr").index(name)
            self.delimiters[-1][slot] = attrs.get(_MATH + "val") or ""
        elif name == "e" and parent == "d" and self.delimiters:
            begin, separator, _end, items = self.delimiters[-1]
            self._add(separator if items else begin)
            self.delimiters[-1][3] = "e"

    def _end_math(self, name: str) -> None:
        if self.math:
            self.math.pop()
        if name in _MATH_GROUPS and self.groups:
            start = self.groups.pop()
            parts = self.paragraphs[-1].parts if self.paragraphs else []
            if start <= len(parts) and len("".join(parts[start:]).strip()) > 1:
                parts.insert(start, "(")  # more than one symbol: "(a+b)/c", not "a+b/c"
                self.paragraphs[-1].size += 1
                self._add(")")
        elif name == "d" and self.delimiters:
            begin, _separator, end, items = self.delimiters.pop()
            self._add(end if items else begin + end)

    # --- tables -------------------------------------------------------------------------

    def _start_table(self, _attrs: dict[str, str]) -> None:
        self.tables += 1

    def _start_row(self, _attrs: dict[str, str]) -> None:
        if self.tables == 1:
            self._end_row()
            self.cells = []

    def _start_cell(self, _attrs: dict[str, str]) -> None:
        if self.tables == 1:
            if self.cells is None:
                self.cells = []
            self.cell = []

    def _end_cell(self) -> None:
        if self.tables == 1:
            if self.cells is None:
                self.cells = []
            self.cells.append(" ".join(self.cell))
            self.cell = []

    def _end_row(self) -> None:
        cells = self.cells or []
        if self.cell:
            cells.append(" ".join(self.cell))
            self.cell = []
        self.cells = None
        if any(cells):
            path = tuple(title for _, title in self.headings)
            for piece in cut_pieces(" | ".join(cells), self.limit):
                self.ready.append(Block(piece, heading=path, kind="table"))
