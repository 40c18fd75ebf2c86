"""Chat edges: sentences that wrap over a line break, bracketed numbers in a document's own
text, markers at the start of a line, CJK markers and sentences, a lone surrogate from the
model, and a client that leaves while the answer is being stored."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.chat import repository
from mainsail.chat.answering import Source, cite
from mainsail.chat.service import model_text
from mainsail.llm.providers import extractive
from mainsail.llm.types import Passage
from mainsail.settings import Settings
from tests.chat.conftest import ask, passage, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import SAILING

# A document that itself holds a bracketed reference number, as papers and wikis do.
MOORING = """# Moorings

A mooring buoy holds a boat without an anchor [2]. Check the pennant for chafe before each night.
"""


# --- the extractive model (no provider configured: the default settings) -----------------


async def test_extractive_answer_finds_a_sentence_wrapped_over_a_line_break(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    """SAILING says "Pay out five to seven times the depth in\\nchain so ...": one sentence
    wrapped over a single line break (as text, Markdown and PDF extraction wrap it). The
    extractive model quotes it (it once answered that the sources say nothing)."""
    await ingest(alice, SAILING, "sailing.md")
    body = (
        await ask(client, alice.headers, question="How many times the depth should I pay out?")
    ).json()
    assert body["model"] == "extractive"
    assert "five to seven times the depth" in body["answer"], body["answer"]
    assert body["citations"], body


async def test_extractive_quote_holding_a_bracketed_number_is_not_counted_as_removed(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    """The extractive model quotes sentences and adds its own marker. A "[2]" that is part
    of the document's text must not be read by ``cite`` as a citation marker (cut out and
    counted in ``removed_citations`` although the model made up no marker)."""
    await ingest(alice, MOORING, "moor.md")
    question = "What holds a boat without an anchor at a mooring buoy?"
    body = (await ask(client, alice.headers, question=question)).json()
    assert body["model"] == "extractive"
    assert "A mooring buoy holds a boat without an anchor" in body["answer"]
    assert body["removed_citations"] == 0, body["answer"]


async def test_extractive_quote_holding_a_bracketed_number_is_not_cited_to_another_document(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    """The same with a second document retrieved: the document's own "[2]" must not name
    passage 2 (sailing.md) and cite the mooring sentence of moor.md to it."""
    moor = await ingest(alice, MOORING, "moor.md")
    await ingest(alice, SAILING, "sailing.md")
    question = "What holds a boat without an anchor at a mooring buoy?"
    body = (await ask(client, alice.headers, question=question)).json()
    marker_doc = {s["marker"]: s["document_id"] for s in body["sources"]}
    (moor_marker,) = [m for m, d in marker_doc.items() if d == moor]
    answer = body["answer"]
    start = answer.index("A mooring buoy holds a boat without an anchor")
    end = answer.index(f"[{moor_marker}]", start) + len(f"[{moor_marker}]")
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer[start:end])}
    # The mooring sentence comes from moor.md alone: no marker of sailing.md may back it.
    assert {marker_doc[n] for n in cited} == {moor}, (answer, marker_doc)


# --- citation markers ----------------------------------------------------------------------


def _paris() -> Source:
    return passage(
        "Paris is big. It has the Louvre museum.",
        title="Paris",
        filename="paris.md",
    )


def test_removing_a_marker_at_the_start_of_a_line_keeps_the_line_break() -> None:
    """A marker naming no passage is removed with one space around it; at the start of a
    line the line break stays and the line does not start with a stray space."""
    cited = cite("Points:\n\n[9] The Louvre is in Paris [1].", [_paris()])
    assert cited.removed == 1
    assert cited.answer.startswith("Points:\n\n"), repr(cited.answer)
    assert "\n " not in cited.answer, repr(cited.answer)


@pytest.mark.parametrize(
    ("answer", "cleaned"),
    [
        ("The Louvre is in Paris ([9]).", "The Louvre is in Paris."),
        ("The Louvre is in Paris [1], [9].", "The Louvre is in Paris [1]."),
        ("The Louvre is in Paris ([9], [1]).", "The Louvre is in Paris ([1])."),
        ("The Louvre is in Paris ([1]; [9]).", "The Louvre is in Paris ([1])."),
        ("The Louvre is in Paris [1], [9]\nNext.", "The Louvre is in Paris [1]\nNext."),
        # What the marker did not leave alone stays: text in the brackets, a clause's comma,
        # brackets that never held a marker.
        ("The Louvre (see [9]) is in Paris [1].", "The Louvre (see) is in Paris [1]."),
        ("Paris, [9] has the Louvre [1].", "Paris, has the Louvre [1]."),
        ("Call f() in Paris [1], then g(1, 2).", "Call f() in Paris [1], then g(1, 2)."),
    ],
)
def test_removed_markers_take_their_brackets_and_separators(answer: str, cleaned: str) -> None:
    """A made-up marker alone in parentheses, or in a list of markers, leaves no "()" or
    dangling comma behind in the answer people read."""
    assert cite(answer, [_paris()]).answer == cleaned


def test_a_removed_full_width_marker_takes_its_full_width_brackets() -> None:
    assert cite("它有卢浮宫博物馆\uff08[9]\uff09。", [_cjk()]).answer == "它有卢浮宫博物馆。"
    assert cite("它有卢浮宫博物馆[1]、[9]。", [_cjk()]).answer == "它有卢浮宫博物馆[1]。"


def _cjk() -> Source:
    return passage(
        "巴黎很大。它有卢浮宫博物馆。",
        chunk_id=7,
        title="巴黎",
        filename="paris-zh.md",
        char_start=100,
    )


def test_full_width_square_bracket_markers_are_read_as_markers() -> None:
    """The answer prompt asks for the question's language; CJK answers write full-width
    square brackets (U+FF3B/U+FF3D): the passage named is cited, and a made-up one is
    removed and counted."""
    cited = cite("它有卢浮宫博物馆\uff3b1\uff3d。", [_cjk()])
    assert [c["marker"] for c in cited.citations] == [1], cited
    made_up = cite("它有卢浮宫博物馆\uff3b9\uff3d。", [_cjk()])
    assert made_up.removed == 1, made_up
    assert "9" not in made_up.answer


def test_a_made_up_number_after_a_full_width_comma_is_removed_and_counted() -> None:
    """ "[1\uff0c9]" (full-width comma, as CJK text writes lists) is a marker: passage 1 is
    cited and the made-up 9 is removed and counted."""
    cited = cite("它有卢浮宫博物馆[1\uff0c9]。", [_cjk()])
    assert cited.removed == 1, cited
    assert [c["marker"] for c in cited.citations] == [1], cited
    assert "9" not in cited.answer, cited.answer


def test_a_cjk_quote_is_one_sentence_of_the_passage() -> None:
    """``Citation.quote`` is one sentence of the cited passage: CJK full stops end
    sentences too (the whole passage was the quote)."""
    cited = cite("卢浮宫博物馆在巴黎[1]。", [_cjk()])
    (citation,) = cited.citations
    assert citation["quote"] in ("巴黎很大。", "它有卢浮宫博物馆。"), citation["quote"]


# --- a model whose output holds a lone surrogate -------------------------------------------


@pytest.fixture
def claude_settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, chat={"model": "fake-claude"}, jobs=QUICK_JOBS
    )


class TestLoneSurrogateFromTheModel:
    @pytest.fixture
    def settings(self, claude_settings: Settings) -> Settings:
        return claude_settings

    async def test_a_lone_surrogate_in_the_streamed_answer_does_not_crash_the_stream(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        """JSON may spell a lone surrogate ("\\ud83d", e.g. half of an emoji's pair), and the
        Anthropic SDK decodes it as is. The stream's token event must still be sent and the
        answer stored (U+FFFD in its place), not end in ``internal_error``."""
        await ingest(alice, SAILING, "sailing.md")
        fake_provider.script(Reply("Pay out \ud83d five to seven times the depth [1]."))
        response = await client.post(
            "/chat/stream", json={"question": "How much anchor chain?"}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        events = sse_events(response.text)
        assert [name for name, _ in events][-2:] == ["answer", "done"], events[-1]
        answer = dict(events)["answer"]
        detail = (
            await client.get(f"/conversations/{answer['conversation_id']}", headers=alice.headers)
        ).json()
        assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]


# --- a client leaving the stream while its finished answer is being stored ------------------


@pytest.fixture
def gpt_settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, chat={"model": "fake-gpt"}, jobs=QUICK_JOBS
    )


class TestClientLeavingAsTheAnswerIsStored:
    @pytest.fixture
    def settings(self, gpt_settings: Settings) -> Settings:
        return gpt_settings

    async def test_a_finished_answer_is_stored_even_if_the_client_leaves_meanwhile(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The model's answer is complete (its StreamEnd came, the call is metered ``ok``
        and paid for); the client's ``http.disconnect`` arrives while ``_finish`` writes the
        answer. The request's task is cancelled, but the answer is stored all the same (it
        was lost, leaving a dangling question). The slow insert only widens the window of a
        real race (any disconnect during the answer's transaction)."""
        await ingest(alice, SAILING, "sailing.md")
        fake_provider.script(Reply("Pay out five to seven times the depth in chain [1]."))
        gone = asyncio.Event()
        original = repository.add_message

        async def slow_add(session: Any, conversation_id: Any, role: str, content: str, **kw: Any):  # type: ignore[no-untyped-def]
            if role == "assistant":
                gone.set()  # the client leaves now
                await asyncio.sleep(0.3)
            return await original(session, conversation_id, role, content, **kw)

        monkeypatch.setattr(repository, "add_message", slow_add)
        raw = json.dumps({"question": "How much anchor chain?"}).encode()
        headers = {**alice.headers, "content-type": "application/json"}
        headers["content-length"] = str(len(raw))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/chat/stream",
            "raw_path": b"/chat/stream",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "app": app,
            "state": {},
        }
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            return None

        await app(scope, receive, send)
        await asyncio.sleep(0.5)
        async with app.state.db.engine.connect() as connection:
            calls = (
                (
                    await connection.execute(
                        text("SELECT status FROM usage_events WHERE kind = 'chat'")
                    )
                )
                .scalars()
                .all()
            )
        assert calls == ["ok"]  # the answer was complete and is paid for
        listed = (await client.get("/conversations", headers=alice.headers)).json()
        detail = (
            await client.get(f"/conversations/{listed['items'][0]['id']}", headers=alice.headers)
        ).json()
        assert [m["role"] for m in detail["messages"]] == ["user", "assistant"], detail


def test_model_text_joins_a_split_surrogate_pair_and_replaces_a_lone_one() -> None:
    assert model_text("a\ud83d\ude00b\x00") == "a\U0001f600b"
    assert model_text("a\ud83d b \ude00") == "a\ufffd b \ufffd"
    assert model_text("plain") == "plain"


def test_the_extractive_model_answers_a_cjk_question_from_a_cjk_passage() -> None:
    """Words of scripts written without spaces are compared as character pairs, so a CJK
    question shares words with a CJK sentence; the sentence quoted is the one that answers."""
    passages = [Passage(id="1", text="巴黎很大。它有卢浮宫博物馆。")]
    assert extractive.answer("卢浮宫博物馆在哪里\uff1f", passages) == "它有卢浮宫博物馆。 [1]"
