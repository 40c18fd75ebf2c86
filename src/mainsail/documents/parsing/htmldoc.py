"""HTML, fed piece by piece to the stdlib parser: block elements end blocks, h1-h6 make the path.

The parser holds only what it has not yet understood (an open tag, comment or script), and
that is capped by ``max_markup_chars``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from mainsail.documents.parsing.model import Block, LimitExceeded, ParseLimits
from mainsail.documents.parsing.textio import (
    clean,
    cut_pieces,
    detect_encoding,
    read_head,
    read_pieces,
    word_end,
)

# Content that is never shown as text. <head> also ends implicitly at the first body element.
_SKIPPED = frozenset(
    {
        "head",
        "script",
        "style",
        "noscript",
        "template",
        "title",
        "svg",
        "annotation",  # an equation's source (TeX), beside the MathML that is shown
        "annotation-xml",
        "iframe",
        "object",
        "nav",
    }
)
_VOID = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr",
    }
)  # fmt: skip
# Elements whose end tag may be left out (closed by the next one) or that have none: a
# ``hidden`` one of these is not skipped, as its end could not be found. (A hidden <p> is:
# what closes a paragraph is known, see ``handle_starttag``.)
_IMPLIED_END = _VOID | {
    "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead", "tbody", "tfoot",
    "colgroup", "caption", "rb", "rt", "rp", "html", "body", "head",
}  # fmt: skip
# A start tag of one of these closes an open element of its group (and what is inside it),
# unless it comes inside one of the group's containers (a list's own items, a table's rows).
_SIBLINGS = (
    (
        frozenset({"td", "th", "tr", "tbody", "thead", "tfoot"}),
        frozenset({"table", "tbody", "thead", "tfoot", "tr"}),
    ),
    (frozenset({"li"}), frozenset({"ul", "ol", "menu"})),
    (frozenset({"dt", "dd"}), frozenset({"dl"})),
)
# Phrasing elements: a block start closes a paragraph whatever of these is open inside it.
_INLINE = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "dfn", "em", "font", "i",
        "kbd", "mark", "nobr", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
        "sup", "time", "tt", "u", "var",
    }
)  # fmt: skip
_OPEN_KEPT = 256  # open elements remembered (unclosed ones pile up in sloppy pages)
_HEAD_CONTENT = frozenset(
    {"title", "meta", "link", "style", "script", "base", "noscript", "template"}
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "header", "hgroup", "hr", "li", "main", "menu", "ol", "p", "pre", "section",
        "summary", "ul", *_HEADINGS,
    }
)  # fmt: skip
_LISTS = frozenset({"ul", "ol", "dl", "menu"})
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")
_DISPLAY_NONE = re.compile(r"(?:^|;)\s*display\s*:\s*none\s*(?:!\s*important\s*)?(?:;|$)", re.I)
_SPACES_AROUND_NEWLINE = re.compile(r" *\n *")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
# What browsers decode for these labels (WHATWG Encoding): supersets of what they name.
_LABEL_CODECS = {
    **dict.fromkeys(
        ("ascii", "us-ascii", "iso-8859-1", "iso8859-1", "latin1", "latin-1"), "cp1252"
    ),
    **dict.fromkeys(("gb2312", "gb_2312", "x-gbk"), "gbk"),
    **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "x-sjis"), "cp932"),
    "euc-kr": "cp949",
    "iso-8859-9": "cp1254",
    "tis-620": "cp874",
}
_UNENDED_MARKUP = "The HTML has a tag, comment or script that never ends."


def html_encoding(head: bytes) -> str:
    """BOM, then a ``<meta charset>`` near the start, then UTF-8 or cp1252 by content."""
    if head.startswith((codecs.BOM_UTF8, b"\xff\xfe", b"\xfe\xff")):
        return detect_encoding(head) or "utf-8"
    return declared_encoding(head) or detect_encoding(head) or "utf-8-sig"


def declared_encoding(head: bytes) -> str | None:
    """The codec a ``<meta charset>`` near the start names, when Python has it and it is
    ASCII-compatible (the tag itself was found by its ASCII bytes)."""
    match = _META_CHARSET.search(head[:4096])
    if match is None:
        return None
    label = match.group(1).decode("ascii").lower()
    try:
        name = codecs.lookup(_LABEL_CODECS.get(label, label)).name
    except LookupError:
        return None
    if name.startswith(("utf-16", "utf-32")) or name in _NOT_PAGE_CODECS:
        return None
    if not getattr(codecs.lookup(name), "_is_text_encoding", True):  # hex, base64, zlib...
        return None
    return "utf-8-sig" if name == "utf-8" else name


# Text codecs Python has that no page is written in (and that would fail or mislead).
_NOT_PAGE_CODECS = frozenset(
    {"undefined", "utf-7", "unicode-escape", "raw-unicode-escape", "punycode", "idna", "rot-13"}
)


def parse_html(path: Path, limits: ParseLimits) -> Iterator[Block]:
    encoding = html_encoding(read_head(path, limits.read_size))
    parser = _BlockParser(limits.max_block_chars)
    for piece in read_pieces(path, encoding=encoding, read_size=limits.read_size):
        parser.feed(piece)
        if len(parser.rawdata) > limits.max_markup_chars:
            raise LimitExceeded(_UNENDED_MARKUP)
        yield from parser.drain()
    parser.close()
    parser.finish()
    yield from parser.drain()


def _outside_quotes(text: str, char: str, start: int, end: int) -> int:
    """Where ``char`` first occurs in ``text[start:end]`` outside quoted strings, or -1
    (``end`` -1: to the end of the text)."""
    quote = ""
    for index in range(start, len(text) if end < 0 else end):
        current = text[index]
        if quote:
            quote = "" if current == quote else quote
        elif current in "\"'":
            quote = current
        elif current == char:
            return index
    return -1


class _BlockParser(HTMLParser):
    """Turns parser events into blocks; finished blocks wait in ``ready`` until drained."""

    def __init__(self, limit: int) -> None:
        super().__init__(convert_charrefs=True)
        self.limit = limit
        self.ready: list[Block] = []
        self.parts: list[str] = []
        self.size = 0
        self.skipping: list[str] = []
        # Elements open outside skipped content, innermost last, and those open when a
        # hidden element began (its end may be implied by theirs).
        self.open: list[str] = []
        self.hidden_under: list[str] | None = None
        self.headings: list[tuple[int, str]] = []
        self.heading_level: int | None = None
        self.pre = 0
        self.lists = 0
        self.quotes = 0
        self.tables = 0
        self.cells: list[str] | None = None  # the outermost table's row in progress
        self.in_cell = False

    def drain(self) -> Iterator[Block]:
        ready, self.ready = self.ready, []
        yield from ready

    # --- markup the standard library's parser reads wrongly ------------------------------

    def parse_html_declaration(self, i: int) -> int:
        """A DOCTYPE with an internal subset (``<!DOCTYPE html [ <!ENTITY ...> ]>``) ends at the
        ``>`` after its ``]``, not at the first ``>``, which lies inside the subset."""
        rawdata = self.rawdata
        if rawdata[i : i + 9].lower() != "<!doctype":
            return super().parse_html_declaration(i)
        end = rawdata.find(">", i + 9)
        if end < 0:  # not all read yet: wait for more, without scanning it again each time
            return -1
        subset = _outside_quotes(rawdata, "[", i + 9, end)
        if subset >= 0 and (end < 0 or subset < end):
            close = rawdata.find("]", subset)
            end = -1 if close < 0 else rawdata.find(">", close)
        return -1 if end < 0 else end + 1

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """``<![keyword[`` with a keyword the standard library does not know raises; a browser
        reads it as a bogus comment that ends at the next ``>``."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1

    def finish(self) -> None:
        self._end_row()
        self._flush()

    # --- parser events ------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.hidden_under is not None and self._ends_hidden(tag, start=True):
            self._unhide()
        if self.skipping:
            if self.skipping == ["head"] and tag not in _HEAD_CONTENT:
                self.skipping.clear()  # the body started without </head>
            else:
                # A skipped element's own name is counted too, so that its inner namesakes'
                # end tags do not end the skipping; inside a hidden element every element is,
                # so that only an end tag matching nothing opened inside can end it early.
                if len(self.skipping) < _OPEN_KEPT and (  # bounded, as ``open`` is
                    tag in _SKIPPED
                    or tag in self.skipping
                    or (self.hidden_under is not None and tag not in _VOID)
                ):
                    self.skipping.append(tag)
                return
        if tag in _SKIPPED:
            self.skipping.append(tag)
            return
        if (tag in _BLOCKS or tag == "table") and "p" in self.open:
            # A block start closes an open paragraph, and what is open inside it.
            del self.open[len(self.open) - 1 - self.open[::-1].index("p") :]
        if tag not in _IMPLIED_END and _hidden(attrs):
            self.skipping.append(tag)
            self.hidden_under = list(self.open)
            return
        if tag not in _VOID:
            self.open.append(tag)
            if len(self.open) > _OPEN_KEPT:
                del self.open[0]
        if tag == "br":
            self._add("\n")
        elif tag == "table":
            self._start_table()
        elif self.tables:
            self._table_start(tag)
        elif tag in _BLOCKS:
            self._flush()
            self._enter(tag, +1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """``<br/>`` is one start tag (the base class adds an end tag, which "</br>" is)."""
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.hidden_under is not None and self._ends_hidden(tag, start=False):
            self._unhide()
        if self.skipping:
            if tag in self.skipping:  # closes the innermost open element of that name
                innermost = len(self.skipping) - 1 - self.skipping[::-1].index(tag)
                del self.skipping[innermost:]
                if not self.skipping:
                    self.hidden_under = None
            return
        if tag in self.open:  # closes the innermost open element of that name
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]
        if tag == "br":  # "</br>" is read as "<br>" (HTML's parsing rules)
            self._add("\n")
        elif tag == "table":
            self._end_table()
        elif self.tables:
            self._table_end(tag)
        elif tag in _BLOCKS:
            self._flush()
            self._enter(tag, -1)

    def _ends_hidden(self, tag: str, *, start: bool) -> bool:
        """Whether ``tag`` ends a hidden element whose end tag was left out, as browsers
        read it: an end tag of an element it is inside, a start tag that closes one of those
        (the next cell, row or list item), or a block start after a hidden paragraph."""
        under = self.hidden_under or []
        if not start:
            return tag in under and tag not in self.skipping
        if (
            (tag in _BLOCKS or tag == "table")
            and (
                "p" in under  # it closes the paragraph the hidden element is in
                or (self.skipping[0] == "p" and all(t in _INLINE for t in self.skipping[1:]))
            )
        ):
            return True
        if len(self.skipping) != 1:  # something opened inside is still open
            return False
        return any(
            tag in group and not group.isdisjoint(under) and self.skipping[0] not in containers
            for group, containers in _SIBLINGS
        )

    def _unhide(self) -> None:
        self.skipping.clear()
        self.hidden_under = None

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self._add(data if self.pre else _SPACES.sub(" ", data))

    # --- blocks -------------------------------------------------------------------------

    def _enter(self, tag: str, step: int) -> None:
        if tag in _HEADINGS:
            self.heading_level = _HEADINGS[tag] if step > 0 else None
        elif tag == "pre":
            self.pre = max(0, self.pre + step)
        elif tag in _LISTS:
            self.lists = max(0, self.lists + step)
        elif tag == "blockquote":
            self.quotes = max(0, self.quotes + step)

    def _add(self, text: str) -> None:
        if not text:
            return
        self.parts.append(text)
        self.size += len(text)
        if self.size > self.limit:
            if self.tables:
                self._end_row()
                return
            # Emit what is known to be whole; a word the last read cut short stays open.
            text = "".join(self.parts)
            end = word_end(text, limit=self.limit)
            self.parts = [text[:end]]
            self._flush()
            if end < len(text):
                self.parts.append(text[end:])
                self.size = len(text) - end

    def _take_text(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        self.size = 0
        text = clean(text)  # character references can produce controls
        if self.pre:
            return text.strip("\n")
        if "\n" in text:
            text = _SPACES_AROUND_NEWLINE.sub("\n", text)
        while "  " in text:
            text = text.replace("  ", " ")
        return text.strip()

    def _flush(self) -> None:
        if not self.parts:
            return
        kind = "paragraph"
        if self.heading_level is not None:
            kind = "heading"
        elif self.pre:
            kind = "code"
        elif self.lists:
            kind = "list"
        elif self.quotes:
            kind = "quote"
        text = self._take_text()
        if not text.strip():
            return
        if kind == "heading" and self.heading_level is not None:
            self._push_heading(self.heading_level, " ".join(text.split()))
        self._emit(text, kind)

    def _push_heading(self, level: int, text: str) -> None:
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))

    def _emit(self, text: str, kind: str) -> None:
        path = tuple(heading for _, heading in self.headings)
        # Code keeps its first line's indentation (cutting strips each piece).
        pieces = (
            [text] if kind == "code" and len(text) <= self.limit else cut_pieces(text, self.limit)
        )
        for piece in pieces:
            self.ready.append(Block(piece, heading=path, kind=kind))

    # --- tables: one block per row of the outermost table, cells joined by " | " ----------

    def _start_table(self) -> None:
        if self.tables:
            self._add(" ")
        else:
            self._flush()
        self.tables += 1

    def _end_table(self) -> None:
        if self.tables == 1:
            self._end_row()
            self._flush()  # text after the last row that belongs to no cell
        elif self.tables:
            self._add(" ")
        self.tables = max(0, self.tables - 1)

    def _table_start(self, tag: str) -> None:
        if self.tables > 1:
            self._add(" ")
        elif tag == "tr":
            self._end_row()
            self.cells = []
        elif tag in _CELLS:
            if self.cells is None:
                self._flush()  # a caption or stray text before the first row
                self.cells = []
            elif self.in_cell:
                self._end_cell()
            self.in_cell = True
        elif tag in _BLOCKS:
            self._add(" ")

    def _table_end(self, tag: str) -> None:
        if self.tables > 1 or tag in _BLOCKS:
            self._add(" ")
        elif tag == "tr":
            self._end_row()
        elif tag in _CELLS:
            self._end_cell()

    def _end_cell(self) -> None:
        if self.cells is not None:
            self.cells.append(" ".join(self._take_text().split()))
        self.in_cell = False

    def _end_row(self) -> None:
        if self.cells is None:
            self._flush()
            return
        if self.in_cell or self.parts:
            self._end_cell()
        cells, self.cells = self.cells, None
        if any(cells):
            self._emit(" | ".join(cells), "table")


def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
    """Whether an element's ``hidden`` attribute hides it (``until-found`` content is found
    by a page search, so it is text a reader can reach), or its inline style says
    ``display: none`` (a machine-readable copy beside the shown text, as Wikipedia's
    coordinates and dates: read, it would repeat the text or add what no reader sees)."""
    return any(
        (name == "hidden" and (value or "").strip().lower() != "until-found")
        or (name == "style" and _DISPLAY_NONE.search(value or "") is not None)
        for name, value in attrs
    )
