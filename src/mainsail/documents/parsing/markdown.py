"""Markdown, read line by line: headings make the path, fences make code blocks.

The text is kept as written (no rendering); only block boundaries and kinds are found, with
the subset of CommonMark that matters for them: ATX and setext headings, fenced code, lists,
block quotes, GFM tables and a YAML front matter. What no reader sees is left out: HTML
comments (outside code) and the payload of base64 ``data:`` URIs (an inline image would make
chunks of base64).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mainsail.documents.parsing.model import Block, ParseLimits
from mainsail.documents.parsing.textio import best_cut, cut_pieces, open_text

# The closing "#"s are taken off in code (``_atx_text``): as part of the pattern, a lazy
# text before optional spaces made a long run of spaces quadratic.
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*))?")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}(?!.*`)|~{3,}).*")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
_THEMATIC = re.compile(r" {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)")
_QUOTE = re.compile(r" {0,3}>")
_TABLE_DELIMITER = re.compile(  # no two space runs side by side: linear on long indents
    r"[ \t]*(?:\|[ \t]*)?:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)+(?:\|[ \t]*)?"
)
_FRONT_MATTER_MAX_LINES = 200
# Front matter opens with a mapping key ("title: ..."): a document that starts with a
# thematic break ("---") and has another later is not YAML.
_YAML_KEY = re.compile(r"""\s*(?:[\w"'][^:#]*|[\w-]+):(?:\s|$)""")
# A line whose first non-space character is none of these can only be paragraph text.
_MARKUP_STARTS = frozenset("`~#=-*_+>|0123456789")
_COMMENT_OR_CODE = re.compile(r"<!--|`+")
_COMMENT_BLOCK = re.compile(r" {0,3}<!--")
_INLINE_COMMENT_MAX_LINES = 200  # held while an inline comment may still close
_TICKS = re.compile(r"`+")
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]*)*;base64,")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_DATA_URI_PREFIX_MAX = 256  # held back at a piece's end while it may open a data: URI


def without_data_payloads(pieces: Iterator[str]) -> Iterator[str]:
    """The text with each base64 ``data:`` URI's payload left out (its ``data:...;base64,``
    prefix stays), however many pieces the payload runs over."""
    skipping = False
    held = ""
    for piece in pieces:
        text, held = held + piece, ""
        out: list[str] = []
        position = 0
        if skipping:
            end = _NOT_BASE64.search(text)
            if end is None:
                continue
            position, skipping = end.start(), False
        while (found := _DATA_URI.search(text, position)) is not None:
            out.append(text[position : found.end()])
            end = _NOT_BASE64.search(text, found.end())
            if end is None:
                skipping, position = True, len(text)
                break
            position = end.start()
        rest = text[position:]
        opening = rest.rfind("data:")
        if (
            opening < 0
            or len(rest) - opening > _DATA_URI_PREFIX_MAX
            or not rest[opening:].isascii()
        ):
            # The piece may end inside "data:" itself.
            cut = next((k for k in range(4, 0, -1) if rest.endswith("data:"[:k])), 0)
            opening = len(rest) - cut if cut else -1
        if opening >= 0:
            rest, held = rest[:opening], rest[opening:]
        out.append(rest)
        if joined := "".join(out):
            yield joined
    if held:
        yield held


def iter_lines(pieces: Iterator[str], limit: int) -> Iterator[str]:
    """Lines without their newline; a line longer than ``limit`` comes in several pieces."""
    pending = ""
    for piece in pieces:
        lines = (pending + piece).split("\n")
        pending = lines.pop()
        yield from lines
        while len(pending) > limit:
            cut = best_cut(pending, limit)
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


def parse_markdown(path: Path, limits: ParseLimits) -> Iterator[Block]:
    builder = _Builder(limits.max_block_chars)
    lines = iter_lines(without_data_payloads(open_text(path, limits)), limits.max_block_chars)
    for line in lines:
        builder.feed(line)
        if builder.ready:
            yield from builder.drain()
    builder.close()
    yield from builder.drain()


class _Builder:
    """Groups lines into blocks; finished blocks wait in ``ready`` until drained."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ready: list[Block] = []
        self.lines: list[str] = []
        self.size = 0
        self.kind: str | None = None
        self.fence: str | None = None  # the opening fence while inside fenced code
        self.headings: list[tuple[int, str]] = []
        # YAML front matter is held until it closes; None once the first line has gone by.
        self.front_matter: list[str] | None = []
        self.in_comment = False  # inside an HTML comment block that opened on an earlier line
        # An inline comment not closed on its line: the text before it and the lines held.
        self.inline_comment: tuple[str, list[str]] | None = None

    def drain(self) -> Iterator[Block]:
        ready, self.ready = self.ready, []
        yield from ready

    def feed(self, line: str) -> None:
        if self.front_matter is None and self.fence is None:
            shown = self._uncommented(line)
            if shown is None:
                return
            line = shown
        self._feed_markdown(line)

    def _feed_markdown(self, line: str) -> None:
        if (held := self.front_matter) is not None:
            self._front_matter_line(held, line)
        elif self.fence is None and line.lstrip()[:1] not in _MARKUP_STARTS and line.strip():
            self._content_line(line)
        elif self.fence is not None:
            self._code_line(line)
        elif match := _FENCE_OPEN.fullmatch(line):
            self.flush()
            self.fence = match.group(1)
            self._append(line, "code")
        elif match := _ATX.fullmatch(line):
            self.flush()
            self._heading(len(match.group(1)), _atx_text(match.group(2) or ""))
        elif (
            (match := _SETEXT.fullmatch(line))
            and self.kind == "paragraph"
            and not _is_table(self.lines)  # a table ends at it: a thematic break
        ):
            text = " ".join(part.strip() for part in self.lines)
            self._reset()
            self._heading(1 if match.group(1)[0] == "=" else 2, text)
        elif not line.strip() or _THEMATIC.fullmatch(line):
            self.flush()
        else:
            self._content_line(line)

    def _uncommented(self, line: str) -> str | None:
        """``line`` without the HTML comments in it, or None for a line wholly inside one
        (or held while it may be).

        As CommonMark reads them: a line starting with ``<!--`` opens a comment block that
        runs to the line holding ``-->``; a comment opened later in a line is inline and must
        close within its paragraph: its lines are held until ``-->`` (and left out), or, at a
        blank line first, given back as text. A ``<!--`` inside a code span is text. A line
        that held only comment reads as a blank one; what follows a comment's end is kept.
        """
        if self.inline_comment is not None:
            prefix, lines = self.inline_comment
            end = line.find("-->")
            if end >= 0:
                self.inline_comment = None
                line = prefix + line[end + 3 :]
            elif not line.strip() or len(lines) >= _INLINE_COMMENT_MAX_LINES:
                self._unhold_comment()
                return line
            else:
                lines.append(line)
                return None
        if self.in_comment:
            end = line.find("-->")
            if end < 0:
                return None
            self.in_comment = False
            rest = line[end + 3 :]
            if not rest.strip():
                return ""
            line = rest
        if "<!--" not in line:
            return line
        shown, opened = _without_comments(line)
        if opened >= 0:
            if shown.strip() or not _COMMENT_BLOCK.match(line):
                self.inline_comment = (shown, [line[opened:]])
                return None
            self.in_comment = True
        return shown if shown.strip() else ""

    def _unhold_comment(self) -> None:
        """A ``<!--`` that did not close within its paragraph was text: its lines go on as
        they were written."""
        if self.inline_comment is None:
            return
        prefix, lines = self.inline_comment
        self.inline_comment = None
        self._feed_markdown(prefix + lines[0])
        for line in lines[1:]:
            self._feed_markdown(line)

    def flush(self) -> None:
        if self.lines:
            kind = self.kind or "paragraph"
            if kind == "paragraph" and _is_table(self.lines):
                kind = "table"
            self._emit("\n".join(self.lines), kind)
        self._reset()

    def _content_line(self, line: str) -> None:
        if _LIST_ITEM.match(line):
            kind = "list"
        elif _QUOTE.match(line):
            kind = "quote"
        else:
            kind = self.kind or "paragraph"  # lazy continuation keeps the block's kind
        if self.kind is not None and kind != self.kind and self.kind != "list":
            self.flush()
        self._append(line, self.kind or kind)

    def _code_line(self, line: str) -> None:
        self._append(line, "code")
        closing = _FENCE_CLOSE.fullmatch(line)
        if (
            closing
            and self.fence is not None
            and closing.group(1)[0] == self.fence[0]
            and len(closing.group(1)) >= len(self.fence)
        ):
            self.flush()

    def close(self) -> None:
        if self.inline_comment is not None:
            self._unhold_comment()
        if self.front_matter:
            self._replay_front_matter()
        self.flush()

    def _front_matter_line(self, held: list[str], line: str) -> None:
        if not held and line.rstrip() != "---":
            self.front_matter = None
            self.feed(line)
            return
        held.append(line)
        if len(held) > 1 and line.rstrip() in ("---", "..."):
            first = next(  # YAML comments ("# ...") may come before the first key
                (text for text in held[1:-1] if text.strip() and not text.lstrip().startswith("#")),
                "",
            )
            if not _YAML_KEY.match(first):  # "---" then prose or a heading: Markdown
                self._replay_front_matter()
                return
            self.front_matter = None
            self._emit("\n".join(held), "metadata")
        elif len(held) > _FRONT_MATTER_MAX_LINES or sum(map(len, held)) > self.limit:
            self._replay_front_matter()

    def _replay_front_matter(self) -> None:
        """An opening ``---`` that never closed was a thematic break: read its lines again."""
        held, self.front_matter = self.front_matter or [], None
        for line in held[1:]:
            self.feed(line)

    def _heading(self, level: int, text: str) -> None:
        text = text.strip()
        if not text:
            return
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))
        for piece in cut_pieces(text, self.limit):
            self.ready.append(Block(piece, heading=self._path(), kind="heading"))

    def _append(self, line: str, kind: str) -> None:
        self.kind = kind
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size > self.limit:
            self._spill()

    def _spill(self) -> None:
        """Emit the block in progress down to less than one limit, keeping its kind and state."""
        if self.kind == "paragraph" and _is_table(self.lines):
            self.kind = "table"
        text = "\n".join(self.lines)
        while len(text) > self.limit:
            cut = best_cut(text, self.limit)
            self._emit(text[:cut], self.kind or "paragraph")
            text = text[cut:]
        self.lines = [text]
        self.size = len(text)

    def _emit(self, text: str, kind: str) -> None:
        for piece in cut_pieces(text, self.limit):
            self.ready.append(Block(piece, heading=self._path(), kind=kind))

    def _reset(self) -> None:
        self.lines = []
        self.size = 0
        self.kind = None
        self.fence = None

    def _path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self.headings)


def _is_table(lines: list[str]) -> bool:
    return len(lines) >= 2 and "|" in lines[0] and bool(_TABLE_DELIMITER.fullmatch(lines[1]))


def _without_comments(line: str) -> tuple[str, int]:
    """``line`` without its HTML comments, read left to right (a code span that starts
    first is text, ``<!--`` in it included), and where a comment that runs on past the line's
    end opens (-1 if none does)."""
    # Each run of backticks, and the next run of the same length (its closer), found once.
    runs = [(run.start(), run.end()) for run in _TICKS.finditer(line)] if "`" in line else []
    closer: dict[int, int] = {}
    after: dict[int, int] = {}
    for start, end in reversed(runs):
        length = end - start
        if length in after:
            closer[start] = after[length]
        after[length] = start
    out: list[str] = []
    position = 0
    while (found := _COMMENT_OR_CODE.search(line, position)) is not None:
        if found.group(0) == "<!--":
            out.append(line[position : found.start()])
            end = line.find("-->", found.end())
            if end < 0:
                return "".join(out), found.start()
            position = end + 3
            continue
        closing = closer.get(found.start(), -1)
        stop = found.end() if closing < 0 else closing + len(found.group(0))
        out.append(line[position:stop])
        position = stop
    out.append(line[position:])
    return "".join(out), -1


def _atx_text(text: str) -> str:
    """An ATX heading's text without its optional closing sequence of "#"s (which must stand
    after a space, or alone)."""
    text = text.rstrip(" \t")
    bare = text.rstrip("#")
    if bare != text and (not bare or bare.endswith((" ", "\t"))):
        return bare.rstrip(" \t")
    return text
