"""Retrieval quality figures, one definition for the index-version gate, the quality test
and the retrieval benchmark: nDCG@k (graded gains, log2 discount) and Recall@k."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

Doc = TypeVar("Doc", bound=Hashable)


def ndcg_at(ranked: Sequence[Doc], gains: Mapping[Doc, float], k: int) -> float:
    """nDCG@k of ``ranked`` given each relevant document's gain (0 when none is relevant)."""
    dcg = sum(gains.get(doc, 0.0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    best = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / best if best > 0 else 0.0


def recall_at(ranked: Sequence[Doc], gains: Mapping[Doc, float], k: int) -> float:
    """The share of documents with a positive gain found in the first ``k`` of ``ranked``."""
    relevant = {doc for doc, gain in gains.items() if gain > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0
