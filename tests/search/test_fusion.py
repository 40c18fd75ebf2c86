"""Hybrid fusion: score fusion (the default) and Reciprocal Rank Fusion, on their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.search.service import Ranking, fuse, fuse_scores


def rankings(
    keyword: list[tuple[int, float]], vector: list[tuple[int, float]]
) -> dict[str, Ranking]:
    return {"keyword": Ranking(keyword), "vector": Ranking(vector, "exact")}


def test_a_keyword_match_far_ahead_of_the_rest_stays_first() -> None:
    # Chunk 1: the only strong keyword match (BM25 12 against 2-3), seventh by vector.
    # Rank fusion puts the vector ranking's favourites ahead of it; score fusion keeps it.
    keyword = [(1, 12.0), (2, 3.0), (3, 2.9), (4, 2.8), (5, 2.5), (6, 2.0), (7, 1.0)]
    vector = [(c, 0.30 + 0.01 * i) for i, c in enumerate([2, 3, 4, 5, 6, 7, 1, *range(8, 30)])]
    assert fuse_scores(rankings(keyword, vector), 0.5)[0][0] == 1
    assert fuse(rankings(keyword, vector), 60)[0][0] != 1


def test_scores_are_scaled_per_retriever_and_mixed_by_the_weight() -> None:
    keyword = [(1, 8.0), (2, 4.0), (3, 0.0)]
    vector = [(3, 0.1), (4, 0.3), (2, 0.5)]  # cosine distances: similarity 0.9, 0.7, 0.5
    fused = {
        chunk: (score, ranks)
        for chunk, score, ranks in fuse_scores(rankings(keyword, vector), 0.25)
    }
    assert fused[1] == (pytest.approx(0.25), {"keyword": 1})
    assert fused[2] == (pytest.approx(0.25 * 0.5), {"keyword": 2, "vector": 3})
    assert fused[3] == (pytest.approx(0.75), {"keyword": 3, "vector": 1})
    assert fused[4] == (pytest.approx(0.75 * 0.5), {"vector": 2})
    # Weight 0 or 1: exactly one retriever's order.
    assert [c for c, _, _ in fuse_scores(rankings(keyword, vector), 1.0)][:2] == [1, 2]
    assert [c for c, _, _ in fuse_scores(rankings(keyword, vector), 0.0)][:2] == [3, 4]


def test_one_retriever_empty_or_a_single_candidate() -> None:
    only_vector = fuse_scores(rankings([], [(5, 0.2), (6, 0.4)]), 0.5)
    assert [c for c, _, _ in only_vector] == [5, 6]
    single = fuse_scores(rankings([(9, 3.0)], [(5, 0.2), (6, 0.4)]), 0.5)
    # A lone keyword candidate takes the keyword side's full share; it ties with the best
    # vector candidate, and the lower chunk id goes first.
    assert [(c, round(score, 9)) for c, score, _ in single] == [(5, 0.5), (9, 0.5), (6, 0.0)]
    assert fuse_scores(rankings([], []), 0.5) == []


hits = st.lists(
    st.tuples(st.integers(0, 30), st.floats(0, 2, allow_nan=False)),
    max_size=20,
    unique_by=lambda hit: hit[0],
)


@given(keyword=hits, vector=hits, weight=st.floats(0, 1))
def test_the_fused_order_is_total_stable_and_covers_both_pools(
    keyword: list[tuple[int, float]], vector: list[tuple[int, float]], weight: float
) -> None:
    keyword.sort(key=lambda hit: -hit[1])
    vector.sort(key=lambda hit: hit[1])
    fused = fuse_scores(rankings(keyword, vector), weight)
    assert [c for c, _, _ in fused] == sorted(
        {c for c, _ in keyword} | {c for c, _ in vector},
        key=lambda c: (-next(s for x, s, _ in fused if x == c), c),
    )
    assert all(-1e-9 <= score <= 1 + 1e-9 for _, score, _ in fused)
    assert fused == fuse_scores(rankings(keyword, vector), weight)
