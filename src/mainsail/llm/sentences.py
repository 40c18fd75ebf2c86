"""Sentences, citation markers and words of answers and passages, shared by the offline
extractive model (which quotes sentences and writes markers) and chat (which reads the
markers back and finds the quote that backs each).

Sentences end at ASCII and CJK full stops, question and exclamation marks; a sentence may
wrap over single line breaks, and a blank line or the end of a line-only item ends it.
"""

from __future__ import annotations

import re

_ENDS = ".!?\u3002\uff01\uff1f\uff0e"  # . ! ? and the CJK full stop, ! ? and . (full width)
SENTENCE = re.compile(rf"[^{_ENDS}\n]+(?:\n(?!\n)[^{_ENDS}\n]+)*(?:[{_ENDS}]+|$)", re.MULTILINE)

# A run of markers: [1], [2, 3], [2][3], ranges [1-3] (a hyphen or an en dash), in ASCII,
# lenticular or full-width brackets, with ASCII, full-width or ideographic commas. A number has at
# most three digits (more passages are never retrieved): a bracket holding a longer one
# ([2020-2021], [1999]) is text, not a marker. Groups: the space or tab before the markers
# (never a line break), the markers, the space or tab after them.
_NUMBERS = r"\d{1,3}(?:\s*[-\u2013]\s*\d{1,3})?"
MARKER = re.compile(
    rf"([ \t]?)((?:[\[\u3010\uff3b]\s*{_NUMBERS}(?:\s*[,\uff0c\u3001]\s*{_NUMBERS})*"
    rf"\s*[\]\u3011\uff3d])+)([ \t]?)"
)
RANGE = re.compile(r"(\d{1,3})(?:\s*[-\u2013]\s*(\d{1,3}))?")

# Where a removed marker was, until the spaces around it are settled (``close_gaps``).
GONE = "\x00"  # no text here holds NUL: it is cleaned out before
# (Not tried from inside a run of spaces: quadratic over a long one.)
_GONE_RUN = re.compile(r"(?<![ \t])([ \t]*)\x00(?:[ \t]*\x00)*([ \t]*)")
# Characters no space goes before (closing punctuation, ASCII and CJK).
_CLOSING = frozenset(".,;:!?)]}\u00bb\u201d\u2019\u2026\u3001\u3002\uff01\uff0c\uff1a\uff1b\uff1f")
# What removed markers leave of their punctuation: brackets that held nothing else ("see
# ([9])." -> "see."), and a list separator with nothing left on one side ("[1], [9]." ->
# "[1].", "([9], [1])" -> "([1])"). Each starts where a run of spaces starts (see above).
_SEPARATOR = "[,;\u3001\uff0c]"
_EMPTY_BRACKETS = re.compile(
    rf"(?<![ \t])[ \t]*[(\uff08][ \t]*\x00(?:[ \t]*{_SEPARATOR}?[ \t]*\x00)*[ \t]*[)\uff09]"
)
_SEPARATOR_BEFORE = re.compile(
    rf"(?<![ \t])[ \t]*{_SEPARATOR}(?:[ \t]*\x00)+"
    r"(?=[ \t]*(?:[.;:!?)\]\uff09\u3002\uff01\uff1f]|[\r\n]|\Z))"
)
_SEPARATOR_AFTER = re.compile(rf"(?<=[(\uff08])[ \t]*\x00(?:[ \t]*\x00)*[ \t]*{_SEPARATOR}[ \t]*")


def gone(marker: re.Match[str]) -> str:
    """What a removed marker (a ``MARKER`` match) leaves until ``close_gaps``: its spaces."""
    return marker.group(1) + GONE + marker.group(3)


def close_gaps(text: str) -> str:
    """Settles the places of removed markers (``GONE``) with the spaces around them: at a
    line's start its indentation stays, at its end nothing does; between two words that a
    space parted, one space; glued to what follows (closing punctuation, a quote, CJK
    text), none. Brackets and list separators left with nothing to enclose or separate go
    with them."""

    def join(gap: re.Match[str]) -> str:
        left = gap.string[gap.start() - 1 : gap.start()]
        right = gap.string[gap.end() : gap.end() + 1]
        if left in ("", "\n"):
            return gap.group(1)
        if right in ("", "\n", "\r") or right in _CLOSING or not gap.group(2):
            return ""
        return " "

    text = _EMPTY_BRACKETS.sub(GONE, text)
    text = _SEPARATOR_AFTER.sub("", _SEPARATOR_BEFORE.sub(GONE, text))
    return _GONE_RUN.sub(join, text)


def without_markers(text: str) -> str:
    """``text`` with every citation marker removed, the words around kept apart."""
    return close_gaps(MARKER.sub(gone, text.replace(GONE, "")))


_WORD = re.compile(r"\w+", re.UNICODE)
# Scripts written without spaces between words: their "words" are runs of a whole clause.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_SEGMENT = re.compile(rf"[{_CJK}]+|[^{_CJK}]+")
_CJK_START = re.compile(rf"[{_CJK}]")


def words(text: str, *, shortest: int) -> list[str]:
    """The words of ``text``, lower-cased, those shorter than ``shortest`` left out; a run of
    CJK characters gives its character pairs instead (one character alone, if that is all),
    so that two texts in those scripts can share words at all. A Latin name written against
    CJK text ("Dockerは") stays a word of its own."""
    found: list[str] = []
    for word in _WORD.findall(text.lower()):
        for segment in _SEGMENT.findall(word):
            if _CJK_START.match(segment):
                pairs = [segment[i : i + 2] for i in range(len(segment) - 1)]
                found.extend(pairs or [segment])
            elif len(segment) >= shortest:
                found.append(segment)
    return found
