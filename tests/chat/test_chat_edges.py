"""Chat at its edges: a conversation deleted mid-answer, answers from the response cache,
long histories, failed and retried answers, range citation markers and bracketed numbers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import URL

from mainsail.chat.answering import MAX_RANGE, Source, cite
from mainsail.chat.schemas import ChatIn
from mainsail.llm.gateway import CallContext
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import Message
from mainsail.settings import Settings
from tests.chat.conftest import ask, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.fixtures.app import wait_until
from tests.fixtures.gateway import gateway_settings, write_catalogue
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import BAKING, SAILING


@pytest.fixture
def chat_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path, chat_overrides: dict[str, Any]) -> Settings:
    return gateway_settings(
        database_url,
        catalogue_file,
        # A 502 must not open the breaker: a retry after it reaches the model.
        llm={"breaker_failures": 10},
        chat={"model": "fake-gpt", **chat_overrides},
        jobs=QUICK_JOBS,
    )


async def _delete_when_answering(
    client: httpx.AsyncClient,
    account: Account,
    conversation: str,
    fake_provider: FakeProviderServer,
) -> int:
    """Deletes the conversation once the model has been asked for the answer (3rd call)."""

    async def asked() -> bool:
        return len(fake_provider.calls) >= 3

    await wait_until(asked, within_s=10, interval=0.02)
    deleted = await client.delete(f"/conversations/{conversation}", headers=account.headers)
    return deleted.status_code


async def _a_conversation(
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
    next_answer: Reply,
) -> str:
    """A conversation of one answered question; the next follow-up is condensed, then
    answered with ``next_answer``."""
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Laminate butter with three folds [1]."),
        Reply("How long should croissants proof?"),
        next_answer,
    )
    first = (await ask(client, alice.headers, question="How are croissants made?")).json()
    return str(first["conversation_id"])


async def _a_conversation_with_a_slow_follow_up(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> str:
    """A conversation of one answered question; the next answer takes 1.2 s to come."""
    slow = Reply("Until they wobble [1].", delay_s=1.2)
    return await _a_conversation(client, alice, ingest, fake_provider, slow)


async def test_a_conversation_deleted_while_chat_answers_is_a_404(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A conversation deleted while ``POST /chat`` answers on it: a 404 saying so, not a 500
    (the answer's insert broke the foreign key)."""
    conversation = await _a_conversation_with_a_slow_follow_up(client, alice, ingest, fake_provider)
    follow, deleted = await asyncio.gather(
        ask(
            client,
            alice.headers,
            question="And how long do they proof?",
            conversation_id=conversation,
        ),
        _delete_when_answering(client, alice, conversation, fake_provider),
    )
    assert deleted == 204
    assert follow.status_code == 404, follow.text
    assert follow.headers["content-type"].startswith("application/problem+json")


async def test_a_conversation_deleted_before_its_stream_opens_is_a_404(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """The same while ``/chat/stream`` waits for the answer's stream to open: the question is
    stored as it opens, so the deleted conversation is the HTTP 404 it is."""
    conversation = await _a_conversation_with_a_slow_follow_up(client, alice, ingest, fake_provider)
    streamed, deleted = await asyncio.gather(
        client.post(
            "/chat/stream",
            json={"question": "And how long do they proof?", "conversation_id": conversation},
            headers=alice.headers,
        ),
        _delete_when_answering(client, alice, conversation, fake_provider),
    )
    assert deleted == 204
    assert streamed.status_code == 404, streamed.text
    assert streamed.headers["content-type"].startswith("application/problem+json")


async def test_a_conversation_deleted_while_its_stream_runs_ends_in_a_404_event(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """Deleted once the stream is under way (its question stored, tokens coming): the stream
    ends in a 404 error event, not the unexpected-crash ``internal_error``."""
    slow = Reply("Until they wobble when the tray is nudged [1].", chunk_delay_s=0.3)
    conversation = await _a_conversation(client, alice, ingest, fake_provider, slow)

    async def delete_once_asked() -> int:
        async def question_stored() -> bool:
            detail = await client.get(f"/conversations/{conversation}", headers=alice.headers)
            return len(detail.json()["messages"]) == 3

        await wait_until(question_stored, within_s=10, interval=0.02)
        deleted = await client.delete(f"/conversations/{conversation}", headers=alice.headers)
        return deleted.status_code

    streamed, deleted = await asyncio.gather(
        client.post(
            "/chat/stream",
            json={"question": "And how long do they proof?", "conversation_id": conversation},
            headers=alice.headers,
        ),
        delete_once_asked(),
    )
    assert deleted == 204
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed.text)
    name, data = events[-1]
    assert name == "error"
    assert data["code"] != "internal_error", data
    assert data["status"] == 404, data


async def _metered_cost(app: FastAPI, user_id: object, request_id: str) -> Decimal:
    async with app.state.db.engine.connect() as connection:
        total = await connection.scalar(
            text(
                "SELECT coalesce(sum(cost_usd), 0) FROM usage_events"
                " WHERE user_id = :u AND request_id = :r"
            ),
            {"u": user_id, "r": request_id},
        )
    return Decimal(total)


async def test_an_answer_from_the_response_cache_reports_no_cost(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    """The same question again (temperature 0) is served from the response cache and metered
    as free: the answer's ``usage`` says so (cost 0, ``cached_calls`` 1), as the ledger does."""
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(Reply("Pay out five to seven times the depth [1]."))
    first = (await ask(client, alice.headers, question="How much anchor chain?")).json()
    second = (await ask(client, alice.headers, question="How much anchor chain?")).json()
    assert len(fake_provider.calls) == 1  # the second answer came from the cache
    assert first["usage"]["cost_usd"] != "0.00000000"
    request_id = second["usage"]["request_id"]

    async def metered() -> bool:
        async with app.state.db.engine.connect() as connection:
            n = await connection.scalar(
                text("SELECT count(*) FROM usage_events WHERE request_id = :r"),
                {"r": request_id},
            )
        return bool(n)

    await wait_until(metered, within_s=5)
    charged = await _metered_cost(app, alice.id, request_id)
    assert charged == 0
    assert Decimal(second["usage"]["cost_usd"]) == charged, second["usage"]
    assert (second["usage"]["model_calls"], second["usage"]["cached_calls"]) == (0, 1)
    assert (first["usage"]["model_calls"], first["usage"]["cached_calls"]) == (1, 0)


LONG_ANSWER = "Laminate butter with three folds [1]. " + "x " * 990


@pytest.mark.parametrize("chat_overrides", [{"history_tokens": 6000}])
async def test_a_follow_up_is_answered_once_the_history_outgrows_the_model_s_window(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A follow-up in a conversation whose history outgrew the model's window is answered: the
    condensing prompt keeps the newest turns that fit the model (it was a 400 about messages
    the caller never sent)."""
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply(LONG_ANSWER),
        *[
            item
            for _ in range(3)
            for item in (Reply("How are croissants made?"), Reply(LONG_ANSWER))
        ],
        Reply("How long should croissants proof?"),
        Reply("Until they wobble [1]."),
    )
    first = await ask(client, alice.headers, question="How are croissants made?")
    conversation = first.json()["conversation_id"]
    for _ in range(3):
        again = await ask(
            client, alice.headers, question="Tell me again?", conversation_id=conversation
        )
        assert again.status_code == 200, again.text
    follow = await ask(
        client, alice.headers, question="And how long do they proof?", conversation_id=conversation
    )
    assert follow.status_code == 200, follow.text


@pytest.mark.parametrize("chat_overrides", [{"history_tokens": 100}])
async def test_a_long_last_answer_does_not_drop_the_question_before_it(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A last answer over the history budget is left out, not the question before it: the
    follow-up is still condensed with that question."""
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Laminate butter with three folds [1]. " + "x " * 150),
        Reply("How long should croissants proof?"),
        Reply("Until they wobble [1]."),
    )
    first = (await ask(client, alice.headers, question="How are croissants made?")).json()
    follow = (
        await ask(
            client,
            alice.headers,
            question="And how long do they proof?",
            conversation_id=first["conversation_id"],
        )
    ).json()
    assert follow["usage"]["model_calls"] == 2  # condensed, then answered
    assert follow["standalone_question"] == "How long should croissants proof?"


@pytest.mark.parametrize("chat_overrides", [{"history_tokens": 100}])
async def test_a_question_over_the_history_budget_takes_its_answer_along(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A question left out of the history (over the budget) takes its answer with it: an
    answer alone would read as the answer to some other question."""
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Croissants need zebraquartz folds [1]."),
        Reply("Until they wobble [1]."),
    )
    long_question = "How are croissants made? " + "Please explain every step in detail. " * 20
    first = (await ask(client, alice.headers, question=long_question)).json()
    follow = await ask(
        client,
        alice.headers,
        question="How long should croissants proof?",
        conversation_id=first["conversation_id"],
    )
    assert follow.status_code == 200, follow.text
    later = json.dumps([call.body for call in fake_provider.calls[1:]])
    assert "zebraquartz" not in later
    assert "Please explain every step" not in later


class TestAFallbackWithASmallerWindow:
    """The prompt may go to any model of the chain (the gateway falls back on failure): it
    is packed for the smallest window of them, not only the requested model's."""

    @pytest.fixture
    def catalogue_file(self, tmp_path: Path, fake_provider: FakeProviderServer) -> Path:
        path = write_catalogue(tmp_path, fake_provider)
        path.write_text(
            path.read_text()
            + """
[models.fake-big]
provider = "fake-openai"
model = "fake-model"
context_window = 100000
max_output_tokens = 4000
fallbacks = ["fake-small"]

[models.fake-small]
provider = "fake-openai"
model = "fake-model"
context_window = 900
max_output_tokens = 200
"""
        )
        return path

    @pytest.fixture
    def chat_overrides(self) -> dict[str, Any]:
        return {"model": "fake-big"}

    async def test_the_prompt_fits_the_smallest_window_of_the_chain(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        for name, corpus in (("sailing.md", SAILING), ("baking.md", BAKING)):
            await ingest(alice, corpus * 4, name)
        fake_provider.script(Reply("Pay out chain [1]."))
        answered = await ask(client, alice.headers, question="How much anchor chain and butter?")
        assert answered.status_code == 200, answered.text
        assert answered.json()["dropped_passages"] >= 1  # more passages than 900 tokens hold
        body = fake_provider.calls[-1].body
        assert body["max_tokens"] <= 200  # type: ignore[operator]
        sent = [Message(role=m["role"], content=m["content"]) for m in body["messages"]]
        assert count_message_tokens(sent) <= 900 - 200


def _source(chunk_id: int = 1) -> Source:
    return Source(
        chunk_id=chunk_id,
        document_id="00000000-0000-0000-0000-000000000001",
        title="Paris",
        filename="paris.md",
        text="Paris is big. It has the Louvre museum.",
        page=None,
        page_end=None,
        heading=(),
        char_start=0,
        char_end=39,
        score=1.0,
    )


def test_a_range_marker_is_read_as_the_passages_it_names() -> None:
    """Range markers (``[1-3]``, with a hyphen or an en dash) are read as the passages they
    name: those that exist are kept and cited, the others removed and counted."""
    source = _source()
    cited = cite("The Louvre museum is in Paris [1-3].", [source])
    assert cited.answer == "The Louvre museum is in Paris [1]."
    assert cited.removed == 2
    assert [c["marker"] for c in cited.citations] == [1]
    two = [source, replace(source, chunk_id=2)]
    spread = cite("Paris has the Louvre [1\u20132]. Far too wide [1-40]. Backwards [2-1].", two)
    assert spread.answer == "Paris has the Louvre [1][2]. Far too wide. Backwards."
    assert spread.removed == 2
    assert [c["marker"] for c in spread.citations] == [1, 2]


def test_a_range_naming_more_than_max_range_passages_is_removed() -> None:
    """A range naming ``MAX_RANGE + 1`` passages is not read: removed, nothing cited."""
    sources = [_source(n) for n in range(1, MAX_RANGE + 2)]
    cited = cite(f"Paris has the Louvre [1-{MAX_RANGE + 1}].", sources)
    assert cited.citations == [], [c["marker"] for c in cited.citations]
    assert cited.answer == "Paris has the Louvre."
    assert cited.removed == 1
    widest = cite(f"Paris has the Louvre [1-{MAX_RANGE}].", sources)
    assert len(widest.citations) == MAX_RANGE


def test_bracketed_numbers_of_four_digits_or_more_are_text_not_markers() -> None:
    """Years (``[2020-2021]``, ``[1999]``) and longer numbers in brackets are left in the
    answer as written and not counted as removed markers; thousands of digits are no error."""
    sources = [_source(1), _source(2)]
    cited = cite("Paris hosted it [2020-2021] and before [1999] [1].", sources)
    assert cited.answer == "Paris hosted it [2020-2021] and before [1999] [1]."
    assert cited.removed == 0
    assert [c["marker"] for c in cited.citations] == [1]
    huge = "[" + "9" * 5000 + "]"
    long_marker = cite(f"Paris has the Louvre {huge} [2].", sources)
    assert long_marker.answer == f"Paris has the Louvre {huge} [2]."
    assert long_marker.removed == 0


async def test_a_follow_up_s_answer_locks_its_conversation_for_key_share(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    """Storing a follow-up locks its conversation ``FOR KEY SHARE``: a delete waits for it,
    nothing else does."""
    conversation = await _a_conversation(
        client, alice, ingest, fake_provider, Reply("Until they wobble [1].")
    )
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "FROM conversations" in statement and " FOR " in statement:
            statements.append(statement)

    engine = app.state.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        follow = await ask(
            client,
            alice.headers,
            question="And how long do they proof?",
            conversation_id=conversation,
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert follow.status_code == 200, follow.text
    assert statements, "no locking read of the conversation"
    assert all("FOR KEY SHARE" in s for s in statements), statements


async def _questions(client: httpx.AsyncClient, account: Account, conversation: str) -> list[str]:
    detail = (await client.get(f"/conversations/{conversation}", headers=account.headers)).json()
    return [m["content"] for m in detail["messages"] if m["role"] == "user"]


async def test_a_keyed_follow_up_retried_after_a_502_stores_its_question_once(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A follow-up whose answer failed (502) stores nothing: its retry under the same
    Idempotency-Key (released on a 5xx) leaves the question once."""
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Laminate butter with three folds [1]."),
        Reply("How long should croissants proof?"),
        Fault("server_error"),
        Fault("server_error"),
        Fault("server_error"),
        Reply("How long should croissants proof?"),
        Reply("Until they wobble [1]."),
    )
    first = (await ask(client, alice.headers, question="How are croissants made?")).json()
    conversation = first["conversation_id"]
    keyed = {**alice.headers, "Idempotency-Key": "follow-up-1"}
    body = {"question": "And how long do they proof?", "conversation_id": conversation}
    failed = await client.post("/chat", json=body, headers=keyed)
    assert failed.status_code == 502, failed.text
    assert await _questions(client, alice, conversation) == ["How are croissants made?"]
    retried = await client.post("/chat", json=body, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert await _questions(client, alice, conversation) == [
        "How are croissants made?",
        "And how long do they proof?",
    ]


async def test_a_keyed_new_question_retried_after_a_502_makes_one_conversation(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """A first question whose answer failed (502) leaves no conversation; its keyed retry
    makes one, holding the question and its answer."""
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(
        Fault("server_error"),
        Fault("server_error"),
        Fault("server_error"),
        Reply("Pay out five to seven times the depth [1]."),
    )
    keyed = {**alice.headers, "Idempotency-Key": "first-question-1"}
    body = {"question": "How much anchor chain?"}
    failed = await client.post("/chat", json=body, headers=keyed)
    assert failed.status_code == 502, failed.text
    assert (await client.get("/conversations", headers=alice.headers)).json()["total"] == 0
    retried = await client.post("/chat", json=body, headers=keyed)
    assert retried.status_code == 200, retried.text
    listed = (await client.get("/conversations", headers=alice.headers)).json()
    assert [c["id"] for c in listed["items"]] == [retried.json()["conversation_id"]]
    detail = (
        await client.get(f"/conversations/{listed['items'][0]['id']}", headers=alice.headers)
    ).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "How much anchor chain?"),
        ("assistant", "Pay out five to seven times the depth [1]."),
    ]


async def test_a_question_refused_over_quota_leaves_no_conversation(
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    """A question refused before the model is asked (429 over quota) stores nothing."""
    await ingest(alice, SAILING, "sailing.md")
    quota = await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 20}, headers=admin.headers
    )
    assert quota.status_code == 200, quota.text
    refused = await ask(client, alice.headers, question="How much anchor chain?")
    assert refused.status_code == 429, refused.text
    assert fake_provider.count() == 0
    assert (await client.get("/conversations", headers=alice.headers)).json()["total"] == 0


async def test_an_answer_cut_at_its_token_limit_says_so(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """An answer the model stopped at its token limit is kept as it is, and its usage (in the
    response, the stream's last event and the stored message) says ``finish_reason: length``;
    a finished one says ``stop``."""
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(
        Reply("Pay out five to seven times [1] the", finish_reason="length"),
        Reply("Pay out five to seven times the depth [1]."),
        Reply("Pay out five to seven times [1] the", finish_reason="length"),
    )
    cut = (await ask(client, alice.headers, question="How much anchor chain?")).json()
    assert cut["answer"].endswith("the")
    assert cut["usage"]["finish_reason"] == "length"
    whole = (await ask(client, alice.headers, question="How much anchor chain, again?")).json()
    assert whole["usage"]["finish_reason"] == "stop"
    streamed = await client.post(
        "/chat/stream", json={"question": "And the chain?"}, headers=alice.headers
    )
    answered = dict(sse_events(streamed.text))["answer"]
    assert answered["usage"]["finish_reason"] == "length"
    detail = (
        await client.get(f"/conversations/{cut['conversation_id']}", headers=alice.headers)
    ).json()
    assert detail["messages"][-1]["usage"]["finish_reason"] == "length"


async def test_a_canned_stream_cut_after_its_retrieval_event_leaves_the_conversation_it_named(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    """The conversation a stream's first event names exists, even if the stream is cut
    before its answer: a canned answer's (no documents) too."""
    service = app.state.chat
    events = service.stream(
        alice.id,
        ChatIn(question="How much anchor chain?"),
        CallContext(user_id=alice.id, kind="chat", role="user"),
    )
    name, data = await anext(events)
    assert name == "retrieval"
    conversation = data["conversation_id"]
    # The client reads the conversation its first event named (or goes away here).
    named = await client.get(f"/conversations/{conversation}", headers=alice.headers)
    await events.aclose()
    assert named.status_code == 200, named.text
