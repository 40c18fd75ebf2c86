"""Plain text: paragraphs separated by blank lines, read in bounded pieces."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mainsail.documents.parsing.model import Block, ParseLimits
from mainsail.documents.parsing.textio import best_cut, cut_pieces, open_text

_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def parse_text(path: Path, limits: ParseLimits) -> Iterator[Block]:
    """One block per paragraph; a paragraph longer than the block limit comes in pieces.

    The buffer only ever holds the paragraph in progress, at most ``max_block_chars`` plus one
    piece, so a file with no blank line at all is read in constant memory.
    """
    limit = limits.max_block_chars
    buffer = ""
    for piece in open_text(path, limits):
        # The buffer holds no separator: a new one starts at its last newline or later.
        start = buffer.rfind("\n")
        start = len(buffer) if start < 0 else start
        buffer += piece
        done = 0
        for separator in _BLANK_LINES.finditer(buffer, start):
            yield from _paragraphs(buffer[done : separator.start()], limit)
            done = separator.end()
        buffer = buffer[done:]
        while len(buffer) > limit:
            cut = best_cut(buffer, limit)
            yield from _paragraphs(buffer[:cut], limit)
            buffer = buffer[cut:]
    yield from _paragraphs(buffer, limit)


def _paragraphs(text: str, limit: int) -> Iterator[Block]:
    for piece in cut_pieces(text, limit):
        yield Block(piece)
