"""The token budget of an answer's prompt, as properties: whatever the passages, history and
budget, the packed prompt never exceeds the budget (counted with the real tokenizer), keeps
the passages' rank order, and packs the same way every time."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mainsail.chat.answering import Source, cite, pack
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import Message

words = st.sampled_from(
    ["anchor", "chain", "tide", "ünïcode", "東京", "lantern", "7", "well-known", "x" * 30, "."]
)
texts = st.lists(words, min_size=1, max_size=120).map(" ".join)


def source(i: int, text: str) -> Source:
    return Source(
        chunk_id=i,
        document_id="d",
        title=f"doc {i}",
        filename=None,
        text=text,
        page=i % 3 or None,
        page_end=None,
        heading=("Part", str(i)),
        char_start=0,
        char_end=len(text),
        score=1.0 / (i + 1),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    passages=st.lists(texts, max_size=12),
    history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), max_size=6),
    question=texts,
    budget=st.integers(min_value=50, max_value=3000),
)
def test_the_prompt_never_exceeds_the_budget(
    passages: list[str], history: list[tuple[str, str]], question: str, budget: int
) -> None:
    candidates = [source(i, text) for i, text in enumerate(passages)]
    turns = [Message(role=role, content=text) for role, text in history]  # type: ignore[arg-type]
    packed = pack(
        question=question,
        history=turns,
        candidates=candidates,
        budget=budget,
        count=count_message_tokens,
    )
    again = pack(
        question=question,
        history=turns,
        candidates=candidates,
        budget=budget,
        count=count_message_tokens,
    )
    assert packed == again  # deterministic
    assert packed.prompt_tokens == count_message_tokens(packed.messages)
    base = pack(
        question=question, history=[], candidates=[], budget=10**9, count=count_message_tokens
    )
    if base.prompt_tokens <= budget:  # the question itself fits: everything else must too
        assert packed.prompt_tokens <= budget
    else:  # not even the question fits: nothing is added to it
        assert packed.sources == []
    ids = [s.chunk_id for s in packed.sources]
    assert ids == sorted(ids)  # rank order kept
    assert packed.dropped == len(candidates) - len(packed.sources)
    # The prompt's last message holds the question and every chosen passage, numbered.
    last = packed.messages[-1].content or ""
    assert question in last
    for n, chosen in enumerate(packed.sources, start=1):
        assert f"[{n}] ({chosen.label()})\n{chosen.text}" in last


def test_markers_that_name_no_passage_are_removed_and_counted() -> None:
    sources = [
        source(0, "Pay out five times the depth in chain. Back down gently."),
        source(1, "b"),
    ]
    cited = cite("Use five times the depth [1]. The moon is cheese [3][1, 9]. Done [0].", sources)
    assert cited.answer == "Use five times the depth [1]. The moon is cheese [1]. Done."
    assert cited.removed == 3
    assert [c["marker"] for c in cited.citations] == [1]
    assert cited.citations[0]["quote"] == "Pay out five times the depth in chain."
    assert (cited.citations[0]["quote_start"], cited.citations[0]["quote_end"]) == (0, 38)


def test_a_marker_after_a_full_stop_quotes_for_the_sentence_it_ends() -> None:
    """The extractive model's own shape, "<sentence> [n] <sentence> [m]": marker 1 cites the
    sentence before it, not the one that follows it."""
    sources = [
        source(0, "Anchors hold boats in place. Chain should be five to seven times the depth."),
        source(1, "Sourdough starter needs flour and water. Boats anchor in calm bays."),
    ]
    answer = (
        "Chain should be five to seven times the depth. [1] "
        "Sourdough starter needs flour and water. [2]"
    )
    cited = cite(answer, sources)
    quotes = {c["marker"]: c["quote"] for c in cited.citations}
    assert quotes == {
        1: "Chain should be five to seven times the depth.",
        2: "Sourdough starter needs flour and water.",
    }
    inline = cite("Anchors hold boats in place [1] and sourdough needs flour [2].", sources)
    assert {c["marker"]: c["quote"] for c in inline.citations} == {
        1: "Anchors hold boats in place.",
        2: "Sourdough starter needs flour and water.",
    }
    # A marker before its claim cites the whole sentence it stands in.
    for leading in (
        "According to [1], chain should be five to seven times the depth.",
        "[1] Chain should be five to seven times the depth.",
    ):
        (citation,) = cite(leading, sources).citations
        assert citation["quote"] == "Chain should be five to seven times the depth."
