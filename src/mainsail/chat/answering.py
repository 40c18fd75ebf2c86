"""The pure parts of an answer: prompts, packing passages into a token budget, and turning
the model's citation markers into verified citations."""

from __future__ import annotations

import bisect
import re
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from mainsail.llm.sentences import (
    GONE,
    MARKER,
    RANGE,
    SENTENCE,
    close_gaps,
    gone,
    without_markers,
    words,
)
from mainsail.llm.types import Message


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    version: int
    system: str
    user: Template

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}"


@cache
def prompt(name: str) -> Prompt:
    text = resources.files("mainsail.chat").joinpath("prompts", f"{name}.toml").read_text()
    raw = tomllib.loads(text)
    return Prompt(name, int(raw["version"]), raw["system"].strip(), Template(raw["user"]))


@dataclass(frozen=True, slots=True)
class Source:
    """A retrieved passage as the answer sees it."""

    chunk_id: int
    document_id: str
    title: str | None
    filename: str | None
    text: str
    page: int | None
    page_end: int | None
    heading: tuple[str, ...]
    char_start: int
    char_end: int
    score: float

    def label(self) -> str:
        where = self.title or self.filename or "untitled"
        if self.page is not None:
            pages = (
                f"{self.page}"
                if self.page_end in (None, self.page)
                else (f"{self.page}-{self.page_end}")
            )
            where += f", page {pages}"
        if self.heading:
            where += f", {' > '.join(self.heading)}"
        return where


def render_source(number: int, source: Source) -> str:
    return f"[{number}] ({source.label()})\n{source.text}"


Count = Callable[[Sequence[Message]], int]


@dataclass(frozen=True, slots=True)
class Packed:
    sources: list[Source]  # numbered 1..n in this order
    messages: list[Message]
    prompt_tokens: int  # counted with the same tokenizer the budget uses
    dropped: int  # retrieved passages that did not fit


def pack(
    *,
    question: str,
    history: Sequence[Message],
    candidates: Sequence[Source],
    budget: int,
    count: Count,
) -> Packed:
    """The prompt for ``question``: the system prompt, as much recent ``history`` as fits
    (already trimmed by the caller to its own budget; dropped oldest first here if needed),
    and the candidates in rank order, each added only if the whole prompt still fits in
    ``budget`` tokens. Deterministic: the same inputs always pack the same way."""
    answer = prompt("answer")
    system = Message(role="system", content=answer.system)

    def build(sources: Sequence[Source], turns: Sequence[Message]) -> list[Message]:
        rendered = "\n\n".join(render_source(i, s) for i, s in enumerate(sources, start=1))
        user = answer.user.substitute(sources=rendered or "(none)", question=question).strip()
        return [system, *turns, Message(role="user", content=user)]

    turns = list(history)
    while turns and count(build([], turns)) > budget:
        turns = turns[1:]  # the oldest goes first, a question with its answer
        while turns and turns[0].role == "assistant":
            turns = turns[1:]
    chosen: list[Source] = []
    for candidate in candidates:
        if count(build([*chosen, candidate], turns)) <= budget:
            chosen.append(candidate)
    messages = build(chosen, turns)
    return Packed(chosen, messages, count(messages), len(candidates) - len(chosen))


# --- citations -------------------------------------------------------------------------------

# A range naming more passages than this is not read as one (nor are its passages kept).
MAX_RANGE = 20

# Code in an answer: a fenced block (up to its closing fence, or the end) and an inline span.
# In a block a bracketed number is code ("x = [1, 2]"), not a marker; in an inline span, one
# glued to what it indexes ("items[0]", "m[1][2]") is, while one after a space is a marker.
_CODE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[^\n]*"
    r"(?s:\n.*?(?:\n[ \t]*(?P=fence)[ \t]*(?=\n|\Z)|\Z)|\Z)"
    r"|(?<!`)(?P<ticks>`+)(?!`)[^\n]+?(?<!`)(?P=ticks)(?!`)",
    re.MULTILINE,
)
# A Markdown footnote marker ("[^2]"), read as the marker "[2]".
_FOOTNOTE = re.compile(r"\[\^(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class _Code:
    blocks: list[tuple[int, int]]  # in order, not overlapping
    spans: list[tuple[int, int]]

    @classmethod
    def of(cls, text: str) -> _Code:
        blocks: list[tuple[int, int]] = []
        spans: list[tuple[int, int]] = []
        for match in _CODE.finditer(text):
            (blocks if match.group("fence") else spans).append(match.span())
        return cls(blocks, spans)

    def holds(self, text: str, position: int) -> bool:
        """Whether a bracket at ``position`` of ``text`` is code."""
        if _within(self.blocks, position):
            return True
        before = text[position - 1 : position]
        glued = bool(before) and not before.isspace() and before != "`"
        return glued and _within(self.spans, position)


def _within(spans: list[tuple[int, int]], position: int) -> bool:
    i = bisect.bisect_right(spans, (position, sys.maxsize)) - 1
    return i >= 0 and spans[i][0] <= position < spans[i][1]


def _footnotes_as_markers(text: str) -> str:
    code = _Code.of(text)
    return _FOOTNOTE.sub(
        lambda m: m.group(0) if code.holds(text, m.start()) else f"[{m.group(1)}]", text
    )


@dataclass(frozen=True, slots=True)
class Cited:
    answer: str  # the answer with every marker kept or removed
    citations: list[dict[str, Any]]
    removed: int  # markers that pointed at no supplied passage


def _words(text: str) -> set[str]:
    # Composed first: a passage extracted with decomposed letters ("u" + U+0308) shares its
    # words with an answer written composed, as models write.
    return set(words(unicodedata.normalize("NFC", text), shortest=3))


def _quote(source: Source, claim: str) -> tuple[str, int] | None:
    """The sentence of the passage that shares the most words with the claim that cites it,
    and where it starts in the passage; verified to occur in the stored text."""
    wanted = _words(claim)
    best: tuple[int, int, str] | None = None  # (-overlap, start, sentence)
    for match in SENTENCE.finditer(source.text):
        sentence = match.group(0).strip()
        if len(sentence) < 3:
            continue
        start = source.text.find(sentence, match.start())
        key = (-len(wanted & _words(sentence)), start, sentence)
        if best is None or key < best:
            best = key
    if best is None:
        return None
    _, start, sentence = best
    if start < 0 or source.text[start : start + len(sentence)] != sentence:
        return None
    return sentence, start


def _expand(item: re.Match[str]) -> list[int]:
    """The passages one item of a marker names: ``2``, or ``1-3`` as 1, 2, 3. A range backwards
    or wider than ``MAX_RANGE`` names passage 0 (none), so it is removed and counted."""
    low = int(item.group(1))
    if item.group(2) is None:
        return [low]
    high = int(item.group(2))
    if high < low or high - low + 1 > MAX_RANGE:
        return [0]
    return list(range(low, high + 1))


def cite(answer: str, sources: Sequence[Source]) -> Cited:
    """Keeps markers that name a supplied passage (1..n), removes the others (and counts
    them), and returns one citation per passage cited, in order of first citation, with a
    quote from the passage that backs the sentence citing it."""
    removed = 0
    first_claim: dict[int, str] = {}
    answer = _footnotes_as_markers(answer.replace(GONE, ""))
    code = _Code.of(answer)
    sentences = {m.start(): m.group(0) for m in SENTENCE.finditer(answer)}
    starts = sorted(sentences)

    def claim_at(position: int) -> str:
        # What the marker ends: its sentence up to the marker, or the sentence before when
        # the marker follows a full stop ("... the sun. [2] Next ...": not "Next ...").
        # A marker leading its claim ("According to [1], ...", "[1] Chain ...") gets its
        # whole sentence.
        inside = [s for s in starts if s <= position]
        if not inside:
            return answer
        before = _words(without_markers(answer[inside[-1] : position]))
        if not before and len(inside) > 1:
            return sentences[inside[-2]]
        if len(before) < 3:
            return sentences[inside[-1]]
        return answer[inside[-1] : position]

    def keep(match: re.Match[str]) -> str:
        nonlocal removed
        if code.holds(answer, match.start(2)):
            return match.group(0)  # code, not a marker
        numbers = [n for item in RANGE.finditer(match.group(2)) for n in _expand(item)]
        valid = list(dict.fromkeys(n for n in numbers if 1 <= n <= len(sources)))
        removed += sum(1 for n in numbers if not 1 <= n <= len(sources))
        if not valid:
            return gone(match)  # the spaces around it are settled once every marker is read
        for n in valid:
            if n not in first_claim:  # the claim is worked out once per passage, not per marker
                first_claim[n] = without_markers(claim_at(match.start()))
        return match.group(1) + "".join(f"[{n}]" for n in valid) + match.group(3)

    cleaned = close_gaps(MARKER.sub(keep, answer))
    citations: list[dict[str, Any]] = []
    for n, claim in first_claim.items():
        source = sources[n - 1]
        quoted = _quote(source, claim)
        citations.append(
            {
                "marker": n,
                "chunk_id": source.chunk_id,
                "document_id": source.document_id,
                "title": source.title,
                "filename": source.filename,
                "page": source.page,
                "page_end": source.page_end,
                "heading": list(source.heading),
                "quote": quoted[0] if quoted else None,
                # Offsets of the quote in the document's extracted text.
                "quote_start": source.char_start + quoted[1] if quoted else None,
                "quote_end": source.char_start + quoted[1] + len(quoted[0]) if quoted else None,
            }
        )
    return Cited(cleaned, citations, removed)
