"""A citation's quote is picked by the words it shares with the claim citing it, whatever
Unicode form each side is written in: text extracted from a PDF or a macOS file often holds
decomposed letters (NFD, "u" + U+0308), while models answer in composed form (NFC)."""

from __future__ import annotations

import unicodedata

from mainsail.chat.answering import Source, cite
from tests.chat.conftest import passage

PASSAGE = "Die Gebühren gelten für alle. Zölle für Häfen gelten täglich."


def _source(text: str) -> Source:
    return passage(text, document_id="d1", filename="zoll.pdf", char_start=100)


def test_the_quote_of_a_decomposed_passage_is_the_sentence_the_claim_repeats() -> None:
    decomposed = unicodedata.normalize("NFD", PASSAGE)
    assert decomposed != PASSAGE
    cited = cite("Zölle für Häfen gelten täglich [1].", [_source(decomposed)])
    (citation,) = cited.citations
    # The quote is the stored (decomposed) text, with its offsets in it.
    expected = unicodedata.normalize("NFD", "Zölle für Häfen gelten täglich.")
    assert citation["quote"] == expected, citation["quote"]
    start = decomposed.index(expected)
    assert citation["quote_start"] == 100 + start
    assert citation["quote_end"] == 100 + start + len(expected)


def test_a_decomposed_claim_finds_the_sentence_of_a_composed_passage() -> None:
    claim = unicodedata.normalize("NFD", "Zölle für Häfen gelten täglich [1].")
    (citation,) = cite(claim, [_source(PASSAGE)]).citations
    assert citation["quote"] == "Zölle für Häfen gelten täglich."
