"""Reading web-search operators out of a query (the parse alone; the searches are in
test_search.py and test_vector_strategies.py)."""

from __future__ import annotations

import pytest

from mainsail.search.query import ParsedQuery, parse


@pytest.mark.parametrize(
    ("query", "text", "constraint"),
    [
        ("anchor chain", "anchor chain", None),
        ('"rare word" -foo bar', "rare word bar", '"rare word" -"foo"'),
        ('-"a b" c', "c", '-"a b"'),
        ('"open phrase', "open phrase", '"open phrase"'),
        ('""   x', "x", None),
        ('a"b c"d', "a b c d", '"b c"'),
        ('"  spaced   out  " y', "spaced out y", '"spaced out"'),
        # Minus signs inside words, before digits, or alone are text.
        ("state-of-the-art", "state-of-the-art", None),
        ("Differentiated E2f-1, -2, -3 TKO cells", "Differentiated E2f-1, -2, -3 TKO cells", None),
        ("a - b", "a - b", None),
        ("-été soleil", "soleil", '-"été"'),
        # A word with a colon or a slash is excluded whole, never partly required.
        ("anchors -site:reddit.com", "anchors", '-"site:reddit.com"'),
        ("x -http://spam.example/a", "x", '-"http://spam.example/a"'),
    ],
)
def test_operators_are_read_like_web_search(query: str, text: str, constraint: str | None) -> None:
    assert parse(query) == ParsedQuery(text, constraint)
