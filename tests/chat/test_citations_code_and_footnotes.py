"""Chat citations: bracketed numbers inside code are code, not citation markers;
Markdown footnote markers ("[^1]") are read as markers (kept when they name a passage,
removed and counted when they name none)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.chat.answering import Source, cite
from mainsail.settings import Settings
from tests.chat.conftest import ask, passage
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import SAILING


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, chat={"model": "fake-gpt"}, jobs=QUICK_JOBS
    )


def _source(chunk_id: int, text: str) -> Source:
    return passage(
        text,
        chunk_id=chunk_id,
        title=f"doc {chunk_id}",
        filename=f"doc{chunk_id}.md",
        char_start=40,
    )


PARIS = _source(1, "Paris is big. The Louvre is in Paris.")
ANCHORS = _source(2, "Anchors hold boats. Chain matters most.")


# --- bracketed numbers in code ---------------------------------------------------------------


def test_an_index_in_inline_code_is_not_removed_from_the_answer() -> None:
    """``items[0]`` in inline code is code: it was cut to ``items`` (the "[0]" read as a
    marker naming no passage) and counted in removed_citations."""
    answer = "Take `items[0]` to get the first museum: the Louvre is in Paris [1]."
    cited = cite(answer, [PARIS])
    assert cited.answer == answer
    assert cited.removed == 0
    assert [c["marker"] for c in cited.citations] == [1]


def test_an_index_in_a_fenced_code_block_is_neither_removed_nor_cited() -> None:
    """In a fenced code block ``arr[7]`` was cut to ``arr`` (and counted), and ``arr[2]``
    was read as a citation of passage 2 that the answer never made."""
    answer = "```python\nfirst = arr[7]\nsecond = arr[2]\n```\nThe Louvre is in Paris [1]."
    cited = cite(answer, [PARIS, ANCHORS])
    assert cited.answer == answer
    assert cited.removed == 0
    assert [c["marker"] for c in cited.citations] == [1]


async def test_chat_keeps_code_indexes_of_the_model_s_answer(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    reply = "Compute `depth[0] * 5` and pay out that much chain [1]."
    fake_provider.script(Reply(reply))
    response = await ask(client, alice.headers, question="How much anchor chain?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == reply
    assert body["removed_citations"] == 0
    assert [c["marker"] for c in body["citations"]] == [1]


# --- Markdown footnote markers ---------------------------------------------------------------


def test_a_footnote_marker_naming_a_passage_is_cited() -> None:
    cited = cite("The Louvre is in Paris [^1].", [PARIS])
    assert [c["marker"] for c in cited.citations] == [1], cited
    assert cited.citations[0]["quote"] == "The Louvre is in Paris."
    assert cited.answer == "The Louvre is in Paris [1]."


def test_a_footnote_marker_naming_no_passage_is_removed_and_counted() -> None:
    """ "[^7]" with one passage supplied names nothing: it stayed in the answer, uncounted."""
    cited = cite("The Louvre is in Paris [^1]. It is huge [^7].", [PARIS])
    assert cited.removed == 1, cited
    assert "7" not in cited.answer, cited.answer
    assert cited.answer == "The Louvre is in Paris [1]. It is huge."
