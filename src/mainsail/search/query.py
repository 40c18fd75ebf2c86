"""Web-search syntax in a query: ``"a phrase"`` must occur, ``-word`` and ``-"a phrase"``
must not.

The rest of the query stays ranked as before (any word may match); the operators only narrow
which passages can be returned. PostgreSQL's ``websearch_to_tsquery`` reads the constraint
(so stemming and stop words are the full-text index's own), and the same quoting and minus
rules decide here what is an operator, with one exception for natural text: a minus counts at
the start of the query or after a space and before a letter or a quote (``state-of-the-art``
and ``-5`` are words), and a quote left open runs to the end. Chat questions and evaluation
queries are read as plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A minus excludes what follows when it starts the query or a word and is followed by a letter
# or a quote: "-2" and "-3" in "E2f-1, -2, -3" are numbers, not exclusions.
_TOKEN = re.compile(r'(?P<neg>(?<!\S)-(?=[^\W\d_]|"))?(?:"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+))')


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    # What is ranked and embedded: the query less its excluded words and its quote marks.
    text: str
    # Web-search syntax of the phrases and exclusions alone; None when there are none.
    constraint: str | None


def parse(query: str) -> ParsedQuery:
    positive: list[str] = []
    constraint: list[str] = []
    for match in _TOKEN.finditer(query):
        negated = match.group("neg") is not None
        phrase = match.group("phrase")
        if phrase is not None:
            phrase = " ".join(phrase.split())
            if not phrase:
                continue
            constraint.append(f'{"-" if negated else ""}"{phrase}"')
            if not negated:
                positive.append(phrase)
        elif negated:
            # Quoted: websearch_to_tsquery would negate only the part before a colon or slash
            # of a bare word and require the rest ("-site:example.com").
            constraint.append(f'-"{match.group("word")}"')
        else:
            positive.append(match.group("word"))
    return ParsedQuery(" ".join(positive), " ".join(constraint) or None)


def plain(query: str) -> ParsedQuery:
    """The query as words only (``query_syntax`` "plain"): quotes and minus signs are text."""
    return ParsedQuery(query, None)
