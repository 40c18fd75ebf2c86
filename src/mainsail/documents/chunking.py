"""Blocks to chunks: structure first, then tokens.

Consecutive blocks under one heading path are gathered into a section (up to ``window_chars``)
and cut by ``semantic-text-splitter`` with the embedding model's own tokenizer, which splits
at the largest unit that fits (paragraphs, then sentences, then words) and overlaps
neighbours by up to ``chunk_overlap`` tokens. A new heading always starts a new chunk.

Provider models (no tokenizer of theirs in process) are counted in cl100k: the splitter's
bundled tiktoken data and ``llm.tokens`` (bundled too; nothing is downloaded). That is the
encoding of OpenAI's embedding models, and for others (Bedrock Titan) the same estimate the
gateway uses for their budgets.

Offsets are into the document's extracted text: every block's text, joined by a blank line.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from mainsail.documents.parsing import Block
from mainsail.llm.tokens import count_tokens

SEPARATOR = "\n\n"
# A tiktoken model whose encoding is cl100k_base, for the splitter (which knows models).
CL100K_MODEL = "text-embedding-3-small"


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
        if tokenizer is None:
            self.splitter = TextSplitter.from_tiktoken_model(
                CL100K_MODEL, capacity=chunk_size, overlap=chunk_overlap
            )
        else:
            counting = Tokenizer.from_str(tokenizer.to_str())
            counting.no_truncation()
            counting.no_padding()
            self.tokenizer = counting
            self.splitter = TextSplitter.from_huggingface_tokenizer(
                counting, capacity=chunk_size, overlap=chunk_overlap
            )
        self.window_chars = max(window_chars, chunk_size * 16)

    def _counts(self, pieces: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [count_tokens(piece) for piece in pieces]
        encodings = self.tokenizer.encode_batch(pieces, add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def chunks(self, blocks: Iterable[Block]) -> Iterator[ChunkText]:
        ordinal = 0
        offset = 0  # where the next block starts in the document's text
        section: list[tuple[int, Block]] = []
        size = 0
        for block in blocks:
            if section and (
                block.heading != section[0][1].heading
                or block.kind == "heading"
                or size + len(block.text) > self.window_chars
            ):
                for chunk in self._split(section, ordinal):
                    yield chunk
                    ordinal += 1
                section, size = [], 0
            section.append((offset, block))
            size += len(block.text) + len(SEPARATOR)
            offset += len(block.text) + len(SEPARATOR)
        if section:
            yield from self._split(section, ordinal)

    def _split(self, section: list[tuple[int, Block]], first: int) -> Iterator[ChunkText]:
        base = section[0][0]
        text = SEPARATOR.join(block.text for _, block in section)
        starts = [start - base for start, _ in section]
        pages = [block.page for _, block in section]
        heading = section[-1][1].heading
        pieces = self.splitter.chunk_indices(text)
        counts = self._counts([p for _, p in pieces])
        for index, ((start, piece), tokens) in enumerate(zip(pieces, counts, strict=True)):
            end = start + len(piece)
            first_block = bisect.bisect_right(starts, start) - 1
            last_block = bisect.bisect_right(starts, max(end - 1, start)) - 1
            yield ChunkText(
                ordinal=first + index,
                text=piece,
                char_start=base + start,
                char_end=base + end,
                page=pages[first_block],
                page_end=pages[last_block],
                heading=section[first_block][1].heading or heading,
                token_count=tokens,
            )
