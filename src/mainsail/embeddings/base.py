"""What the rest of the service needs from an embedding model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import tokenizers


class Embedder(Protocol):
    """A sentence embedding model.

    ``name`` identifies the model and its numerics (``all-MiniLM-L6-v2@int8``,
    ``all-MiniLM-L6-v2@fp32``): vectors with different names must not be compared. ``embed``
    is synchronous and CPU bound; async callers run it in a worker thread.
    """

    name: str
    dimension: int
    # Tokens per text the model reads, its special tokens ([CLS], [SEP]) included: a text of
    # more than max_tokens - 2 word pieces (count_tokens) is truncated, not rejected.
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dimension), each row L2-normalized, in the order given."""
        ...

    def count_tokens(self, text: str) -> int:
        """Word pieces in ``text``, without special tokens and without truncation."""
        ...

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The model's fast tokenizer (no truncation, no padding), e.g. for a text splitter."""
        ...


@runtime_checkable
class TokenIdEmbedder(Protocol):
    """An embedder that also reads texts its :attr:`~Embedder.tokenizer` already tokenized
    (the chunker did, to count them), instead of tokenizing them again."""

    def embed_token_ids(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """As ``embed``, from each text's word pieces (int32, no special tokens)."""
        ...
