"""Blocks to chunks: structure first, then tokens.

Consecutive blocks under one heading path are gathered into a section (up to ``window_chars``)
and cut by ``semantic-text-splitter`` with the embedding model's own tokenizer, which splits
at the largest unit that fits (paragraphs, then sentences, then words) and overlaps
neighbours by up to ``chunk_overlap`` tokens.

A heading never makes a chunk of its own when content follows it: a heading starts a new
section, which also takes the content under it (a run of nested headings, such as a chapter
and its first section, stays together until that content). The splitter is shown each
heading joined to the block after it by spaces instead of the blank line (the same number of
characters, so its offsets stay those of the text), so it cuts the heading and the start of
its content as one paragraph: the first chunk holds both. The same holds for a title-like
line (a short one-line paragraph that does not end a sentence, or any short first line of
the document, as in "Title\\n\\nbody" uploaded as plain text), as long as the lines joined
ahead of the content stay within half a chunk. The chunks are counted on the text itself; where
the joined view counted short (cl100k reads two spaces and a blank line differently) the
splitter is asked again for a smaller size or overlap, at most three times, before the
section is cut as it is. Chunk text is always the document's own text at
``[char_start, char_end)``; a chunk's heading path is that of the first content it holds.
Only a heading with no content under it (a document of headings alone, an empty section)
makes a chunk of headings.

Counting is the splitter's main cost: it sizes many candidate stretches of a section, each
tokenized afresh by its built-in sizer. With the model's own (WordPiece) tokenizer the chunker
instead tokenizes each section once and answers every stretch from those tokens' offsets
(``_Spans``): a stretch that starts and ends between words holds exactly the tokens it would
give alone, since WordPiece cuts words at spaces and punctuation without looking across them.
A stretch that cuts a word is tokenized alone, as before. The chunks are the same either way;
the splitter's counting takes about a tenth of the time, chunking as a whole about a third.

Provider models (no tokenizer of theirs in process) are counted in cl100k: the splitter's
bundled tiktoken data and ``llm.tokens`` (bundled too; nothing is downloaded). That is the
encoding of OpenAI's embedding models, and for others (Bedrock Titan) the same estimate the
gateway uses for their budgets.

Offsets are into the document's extracted text: every block's text, joined by a blank line.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
from semantic_text_splitter import TextSplitter
from tokenizers import Encoding, Tokenizer, models, normalizers, pre_tokenizers

from mainsail.documents.parsing import Block
from mainsail.llm.tokens import count_tokens

SEPARATOR = "\n\n"


def default_overlap(overlap: int, size: int) -> int:
    """The configured overlap for chunks of ``size`` tokens when none was asked for: at most
    a quarter of them (the default may not fit a small size)."""
    return min(overlap, size // 4)


def fit_to_model(size: int, overlap: int, *, limit: int) -> tuple[int, int]:
    """(size, overlap) of chunks a model reading ``limit`` tokens embeds whole: a larger size
    is capped at ``limit``, the overlap then at most a quarter of it."""
    if size <= limit:
        return size, overlap
    return limit, default_overlap(overlap, limit)


# What the splitter sees between a heading (or title line) and the block it leads into: the
# same length as SEPARATOR, but no paragraph break to cut at.
JOINER = " " * len(SEPARATOR)
# The joined block's sentence ends are shown as commas and its line breaks as spaces (one
# character each, so offsets hold), so the splitter finds no sentence end or line break to cut
# at inside it either ("4. Scope", "Is it safe? A trial.", a heading on two lines). The chunks'
# counts are taken on the real text, which is cut as it is if one went over the size.
_CALM = str.maketrans(".!?\u3002\uff01\uff1f\n\r", ",,,\u3001\uff0c\uff0c  ")
# cl100k splitters kept at most: the default one, and those made for a smaller size or overlap
# when a joined view counts short.
_TIGHTER_KEPT = 4
# A title-like line ends no sentence; these end one, or a quotation (dialogue, not a title):
# the ASCII ones, the ellipsis, closing quotes, and CJK full stop, exclamation and question.
SENTENCE_ENDS = tuple('.!?;,"\u2026\u201d\u2019\u3002\uff01\uff1f')
# A tiktoken model whose encoding is cl100k_base, for the splitter (which knows models).
CL100K_MODEL = "text-embedding-3-small"


# WordPiece reads a word of more than ``max_input_chars_per_word`` characters (100 for BERT's
# models; a hex dump, a run of digits, minified data) as one [UNK] token. Counted as one, such a
# word of any length would fit any chunk size: it counts as one token per this many of its
# characters instead, about what its pieces come to (1.5 for random letters and digits, 2 for
# a repeated letter, 2.7 for a long German compound).
CHARS_PER_UNREAD_TOKEN = 1.5


def _unread_words(tokenizer: Tokenizer) -> tuple[int, int] | None:
    """(the unknown token's id, the longest word read) of a WordPiece tokenizer, else None."""
    model = tokenizer.model
    if not isinstance(model, models.WordPiece):
        return None
    unknown = tokenizer.token_to_id(model.unk_token)
    return None if unknown is None else (unknown, int(model.max_input_chars_per_word))


def _weights(
    encoding: Encoding, unread: tuple[int, int] | None, ids: np.ndarray | None = None
) -> np.ndarray | None:
    """Each token's count, where some token is a word too long to be read; else None.
    ``ids``: the encoding's ids as an array, if made already."""
    if unread is None:
        return None
    unknown, longest = unread
    if ids is None:
        ids = np.asarray(encoding.ids, dtype=np.int32)
    candidates = np.flatnonzero(ids == unknown)
    if not len(candidates):
        return None
    offsets = encoding.offsets
    weights: np.ndarray | None = None
    for i in candidates:
        start, end = offsets[i]
        if end - start > longest:
            if weights is None:
                weights = np.ones(len(ids), dtype=np.int64)
            weights[i] = math.ceil((end - start) / CHARS_PER_UNREAD_TOKEN)
    return weights


class _Spans:
    """Token counts of stretches of one text, from a single encoding of it.

    Exact: a stretch that begins or ends inside a token, or between two pieces of one word,
    is tokenized on its own instead. Called by the splitter with substrings of ``text`` (found
    from where the last one was, as it works forwards), or with known offsets by ``count``.
    """

    def __init__(self, tokenizer: Tokenizer, text: str, *, like: _Spans | None = None) -> None:
        """``like``: spans of a text whose tokens have the same offsets as ``text``'s (see
        ``view``), whose encoding is reused instead of tokenizing ``text``."""
        self.tokenizer = tokenizer
        self.text = text
        self.hint = 0
        self.ids: np.ndarray | None = None  # a view's spans count, but hold no word pieces
        self.starts: list[int]
        self.ends: list[int]
        self.words: list[int | None]
        # Counts before each token, where a word too long to be read counts for more than one
        # (``_weights``); None when every token counts one.
        self.before: np.ndarray | None
        self.unread: tuple[int, int] | None
        if like is not None:
            self.unread = like.unread
            self.starts, self.ends, self.words = like.starts, like.ends, like.words
            self.before = like.before
            return
        self.unread = _unread_words(tokenizer)
        encoding = tokenizer.encode(text, add_special_tokens=False)
        self.ids = np.asarray(encoding.ids, dtype=np.int32)
        self.starts = [start for start, _ in encoding.offsets]
        self.ends = [end for _, end in encoding.offsets]
        self.words = encoding.word_ids
        weights = _weights(encoding, self.unread, self.ids)
        self.before = None if weights is None else np.concatenate(([0], np.cumsum(weights)))

    def view(self, text: str) -> _Spans:
        """Spans of ``text``, a view of this text with some punctuation marks and whitespace
        replaced one character for another (the chunker's joined view): with a tokenizer that
        splits every punctuation mark off as a word of its own, its tokens have the same
        offsets, so this encoding answers its counts."""
        return _Spans(self.tokenizer, text, like=self)

    def __call__(self, piece: str) -> int:
        start = self.text.find(piece, self.hint)
        if start < 0:
            start = self.text.find(piece)
        if start < 0:  # not a stretch of this text
            return self._alone(piece)
        self.hint = max(start - 4 * len(piece), 0)
        return self.count(start, start + len(piece))

    def count(self, start: int, end: int) -> int:
        tokens = self._tokens(start, end)
        if tokens is None:
            inside = self._inside_unread(start, end)
            return self._alone(self.text[start:end]) if inside is None else inside
        first, after = tokens
        if after <= first:
            return 0
        if self.before is not None:
            return int(self.before[after] - self.before[first])
        return after - first

    def token_ids(self, start: int, end: int) -> np.ndarray:
        """The word pieces of ``[start, end)`` (no special tokens), as tokenized alone."""
        tokens = self._tokens(start, end)
        if tokens is None or self.ids is None:
            piece = self.tokenizer.encode(self.text[start:end], add_special_tokens=False)
            return np.asarray(piece.ids, dtype=np.int32)
        first, after = tokens
        # A copy: a chunk must not keep its whole section's array alive.
        return self.ids[first:after].copy() if after > first else self.ids[:0].copy()

    def _tokens(self, start: int, end: int) -> tuple[int, int] | None:
        """The tokens ``[first, after)`` that ``[start, end)`` holds; None if it cuts one."""
        starts, ends, words = self.starts, self.ends, self.words
        first = bisect.bisect_left(ends, start + 1)  # the first token ending inside
        after = bisect.bisect_left(starts, end)  # the first token starting at or past the end
        if (
            (first < len(starts) and starts[first] < start)  # a token across the start
            or (after > 0 and ends[after - 1] > end)  # a token across the end
            or (0 < first < len(words) and words[first] == words[first - 1] is not None)
            or (0 < after < len(words) and words[after] == words[after - 1] is not None)
        ):
            return None
        return first, after

    def _inside_unread(self, start: int, end: int) -> int | None:
        """The count of ``[start, end)`` when it cuts only words too long to be read, from this
        encoding (the splitter cuts such a word many times, each a stretch as long as the
        word to tokenize alone); None when it cuts another token."""
        before = self.before
        if before is None:
            return None
        starts, ends, words = self.starts, self.ends, self.words

        def unread(i: int) -> bool:
            return bool(before[i + 1] - before[i] > 1)

        first = bisect.bisect_left(ends, start + 1)
        after = bisect.bisect_left(starts, end)
        total, lo, hi = 0, first, after
        if first < len(starts) and starts[first] < start:  # across the start
            if not unread(first):
                return None
            if ends[first] >= end:  # within one word
                return self._fragment(start, end)
            total += self._fragment(start, ends[first])
            lo = first + 1
        if hi > lo and ends[hi - 1] > end:  # across the end
            if not unread(hi - 1):
                return None
            total += self._fragment(starts[hi - 1], end)
            hi -= 1
        if (0 < lo < len(words) and words[lo] == words[lo - 1] is not None) or (
            0 < hi < len(words) and hi == after and words[hi] == words[hi - 1] is not None
        ):
            return None
        return total + (int(before[hi] - before[lo]) if hi > lo else 0)

    def _fragment(self, start: int, end: int) -> int:
        """A stretch of one word too long to be read, as counted alone."""
        if end - start > (self.unread[1] if self.unread else 0):
            return math.ceil((end - start) / CHARS_PER_UNREAD_TOKEN)
        return self._alone(self.text[start:end])

    def _alone(self, piece: str) -> int:
        encoding = self.tokenizer.encode(piece, add_special_tokens=False)
        weights = _weights(encoding, self.unread)
        return len(encoding.ids) if weights is None else int(weights.sum())


@dataclass(frozen=True, slots=True)
class ChunkText:
    ordinal: int
    text: str
    char_start: int
    char_end: int
    page: int | None
    page_end: int | None
    heading: tuple[str, ...]
    token_count: int
    # The text's word pieces in the embedding model's tokenizer (no special tokens), where the
    # chunker counted with it: the local embedder reads them instead of tokenizing again.
    token_ids: np.ndarray | None = field(default=None, compare=False, repr=False)


class Chunker:
    def __init__(
        self,
        tokenizer: Tokenizer | None,
        *,
        chunk_size: int,
        chunk_overlap: int,
        window_chars: int = 32_768,
    ) -> None:
        """``tokenizer``: the embedding model's own; None counts in cl100k (provider models)."""
        self.tokenizer: Tokenizer | None = None
        self.source = tokenizer  # the tokenizer given, whose word pieces chunks carry
        if tokenizer is not None:
            self.tokenizer = _counting(tokenizer)
        # BERT's pre-tokenizer makes every punctuation mark a word of its own and splits at any
        # whitespace, so the joined view (punctuation and whitespace swapped one for one) has
        # the text's token offsets: its counts come from the text's encoding (``_Spans.view``).
        self._views_alike = self.tokenizer is not None and (
            isinstance(self.tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
            and isinstance(self.tokenizer.normalizer, normalizers.BertNormalizer | None)
        )
        self.chunk_overlap = chunk_overlap
        # cl100k splitters by (size, overlap): the default one, and those for a smaller size or
        # overlap, made when a joined view counts short. The model's own tokenizer counts
        # through a splitter made for each text (``_Spans``).
        self._tiktoken: dict[tuple[int, int], TextSplitter] = {}
        self.chunk_size = chunk_size
        # The most tokens of lines joined ahead of content (but a heading right before the
        # content always joins it): the chunk keeps at least half its room for the content.
        self.lead_tokens = chunk_size // 2
        self.window_chars = max(window_chars, chunk_size * 16)

    def _spans(self, text: str) -> _Spans | None:
        return None if self.tokenizer is None else _Spans(self.tokenizer, text)

    def _indices(
        self, text: str, spans: _Spans | None, capacity: int, overlap: int
    ) -> list[tuple[int, str]]:
        """The splitter's cut of ``text`` (counted through ``spans``, made on ``text``)."""
        overlap = min(overlap, capacity - 1)
        if spans is not None:
            spans.hint = 0
            counted = TextSplitter.from_callback(spans, capacity=capacity, overlap=overlap)
            return counted.chunk_indices(text)
        kept = self._tiktoken.get((capacity, overlap))
        if kept is None:
            if len(self._tiktoken) >= _TIGHTER_KEPT:
                self._tiktoken.clear()
            kept = TextSplitter.from_tiktoken_model(
                CL100K_MODEL, capacity=capacity, overlap=overlap
            )
            self._tiktoken[capacity, overlap] = kept
        return kept.chunk_indices(text)

    def _counts(self, pieces: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [count_tokens(piece) for piece in pieces]
        encodings = self.tokenizer.encode_batch(pieces, add_special_tokens=False)
        unread = _unread_words(self.tokenizer)
        return [
            len(e.ids) if (weights := _weights(e, unread)) is None else int(weights.sum())
            for e in encodings
        ]

    def _counted(
        self, text: str, spans: _Spans | None, stretches: Iterable[tuple[int, int]]
    ) -> list[int]:
        """Token counts of ``[start, end)`` stretches of ``text`` (``spans``: made on it)."""
        if spans is None:
            return self._counts([text[start:end] for start, end in stretches])
        return [spans.count(start, end) for start, end in stretches]

    def chunks(self, blocks: Iterable[Block]) -> Iterator[ChunkText]:
        """The chunks of a document's blocks, numbered from 0. A stretch the tokenizer reads
        as nothing (zero-width characters alone) is no chunk: nothing to embed or to find."""
        ordinal = 0
        for chunk in self._chunks(blocks):
            if chunk.token_count:
                yield chunk if chunk.ordinal == ordinal else replace(chunk, ordinal=ordinal)
                ordinal += 1

    def _chunks(self, blocks: Iterable[Block]) -> Iterator[ChunkText]:
        ordinal = 0
        offset = 0  # where the next block starts in the document's text
        section: list[tuple[int, Block]] = []
        size = 0
        content: tuple[str, ...] | None = None  # the section content's heading path, if any
        for block in blocks:
            if section and (
                _opens_section(block, section[-1][1], content)
                or (
                    size + len(block.text) > self.window_chars
                    # A heading or title line at the end of a window takes the next block
                    # along (past the window by one block at most), not a chunk alone.
                    and (size > self.window_chars or not self._may_lead(section[-1][1]))
                )
            ):
                for chunk in self._split(section, ordinal):
                    yield chunk
                    ordinal += 1
                section, size, content = [], 0, None
            section.append((offset, block))
            if content is None and block.kind != "heading":
                content = block.heading
            size += len(block.text) + len(SEPARATOR)
            offset += len(block.text) + len(SEPARATOR)
        if section:
            yield from self._split(section, ordinal)

    def _split(self, section: list[tuple[int, Block]], first: int) -> Iterator[ChunkText]:
        base = section[0][0]
        text = SEPARATOR.join(block.text for _, block in section)
        starts = [start - base for start, _ in section]
        pages = [block.page for _, block in section]
        joined = self._leads(section, document_start=base == 0)
        spans = self._spans(text)
        pieces, counts = self._cut(text, spans, section, joined) if joined else ([], [])
        if not pieces:
            pieces = self._indices(text, spans, self.chunk_size, self.chunk_overlap)
            counts = self._counted(text, spans, _stretches(pieces))
        for index, ((start, piece), tokens) in enumerate(zip(pieces, counts, strict=True)):
            end = start + len(piece)
            ids = None if spans is None else spans.token_ids(start, end)
            first_block = bisect.bisect_right(starts, start) - 1
            last_block = bisect.bisect_right(starts, max(end - 1, start)) - 1
            yield ChunkText(
                ordinal=first + index,
                text=piece,
                char_start=base + start,
                char_end=base + end,
                page=pages[first_block],
                page_end=pages[last_block],
                heading=_heading(section, first_block, last_block),
                token_count=tokens,
                token_ids=ids,
            )

    def _cut(
        self,
        text: str,
        spans: _Spans | None,
        section: list[tuple[int, Block]],
        joined: set[int],
    ) -> tuple[list[tuple[int, str]], list[int]]:
        """Cuts ``text`` as the splitter cuts its joined view; nothing if no cut of that view
        keeps to the size and the overlap once counted on the text itself."""
        guide = "".join(
            block.text.translate(_CALM) + JOINER if i in joined else block.text + SEPARATOR
            for i, (_, block) in enumerate(section)
        )[: len(text)]
        guide_spans = (
            spans.view(guide) if spans is not None and self._views_alike else self._spans(guide)
        )
        capacity, overlap = self.chunk_size, self.chunk_overlap
        for _ in range(3):
            shown = self._indices(guide, guide_spans, capacity, overlap)
            pieces = [(start, text[start : start + len(piece)]) for start, piece in shown]
            counts = self._counted(text, spans, _stretches(pieces))
            shared = self._counted(
                text,
                spans,
                [
                    (after, before + len(piece))
                    for (before, piece), (after, _) in itertools.pairwise(pieces)
                    if after < before + len(piece)
                ],
            )
            over = [i for i, tokens in enumerate(counts) if tokens > self.chunk_size]
            overlap_over = max(shared, default=0) - self.chunk_overlap
            if not over and overlap_over <= 0:
                return pieces, counts
            # cl100k may count the view a token short of the text per line joined: ask the
            # splitter for a view that much shorter than the longest (or overlap) it made.
            if over:
                views = self._counted(guide, guide_spans, _stretches(shown[i] for i in over))
                fit = min(
                    v - (counts[i] - self.chunk_size) for v, i in zip(views, over, strict=True)
                )
                capacity = min(fit, capacity - 1)
            if overlap_over > 0:
                overlap = max(overlap - overlap_over, 0)
            if capacity < 2:
                break
        return [], []

    def _leads(self, section: list[tuple[int, Block]], *, document_start: bool) -> set[int]:
        """The blocks of ``section`` to join to the block after them: headings and title-like
        lines ahead of content, read back from the content while they fit ``lead_tokens``."""
        candidates: dict[int, str] = {}
        for i, (_, block) in enumerate(section[:-1]):
            if block.kind == "heading" or self._title_like(block, first=document_start and i == 0):
                candidates[i] = block.text
        if not candidates:
            return set()
        tokens = dict(zip(candidates, self._counts(list(candidates.values())), strict=True))
        joined: set[int] = set()
        ahead: int | None = None  # tokens joined ahead of the content below; None: no content
        for i in reversed(range(len(section))):
            if i not in tokens:
                ahead = 0  # content
                continue
            heading = section[i][1].kind == "heading"
            fits = ahead is not None and ahead + tokens[i] <= self.lead_tokens
            # A heading always joins what it leads into (content, or a line joined to it).
            if fits or (heading and ahead is not None and section[i + 1][1].kind != "heading"):
                joined.add(i)
                ahead = (ahead or 0) + tokens[i]
            else:  # a line that does not fit is content; headings that do not lead nowhere
                ahead = None if heading else 0
        return joined

    def _may_lead(self, block: Block) -> bool:
        return block.kind == "heading" or self._title_like(block, first=True)

    def _title_like(self, block: Block, *, first: bool) -> bool:
        """A short one-line paragraph that ends no sentence (any short line if it opens the
        document: a title). Lines too long to count are never titles."""
        line = block.text.rstrip()
        return (
            block.kind == "paragraph"
            and "\n" not in line
            and len(line) <= self.chunk_size * 8
            and (first or not line.endswith(SENTENCE_ENDS))
        )


def _stretches(pieces: Iterable[tuple[int, str]]) -> Iterator[tuple[int, int]]:
    """``[start, end)`` of each (start, text) piece the splitter cut."""
    return ((start, start + len(piece)) for start, piece in pieces)


def _opens_section(block: Block, last: Block, content: tuple[str, ...] | None) -> bool:
    """Whether ``block`` starts a new section after ``last`` (whose section's content is under
    ``content``, or None while the section holds headings only)."""
    if content is not None:  # the section has content: a heading or a new path ends it
        return block.kind == "heading" or block.heading != content
    if block.kind != "heading":
        return False  # the content under the headings so far
    # Headings only so far: a nested heading joins them (chapter, then its first section);
    # any other means the headings so far have no content of their own.
    depth = len(last.heading)
    return not (len(block.heading) > depth and block.heading[:depth] == last.heading)


def _heading(section: list[tuple[int, Block]], first: int, last: int) -> tuple[str, ...]:
    """A chunk's heading path: that of the first content it holds, or of its first heading."""
    for i in range(first, last + 1):
        if section[i][1].kind != "heading":
            return section[i][1].heading
    return section[first][1].heading


def _counting(tokenizer: Tokenizer) -> Tokenizer:
    """``tokenizer`` as the chunker counts with it: whole texts, neither truncated nor padded.

    The local embedder's tokenizer is already so and is used as it is: a copy (its JSON
    written and read back) takes ~15 ms of the event loop for every document, with the GIL
    held. Any other is copied, so that the caller's keeps its settings. Nothing here changes
    the tokenizer's settings afterwards, and encoding is safe from several threads at once.
    """
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    counting = Tokenizer.from_str(tokenizer.to_str())
    counting.no_truncation()
    counting.no_padding()
    return counting
