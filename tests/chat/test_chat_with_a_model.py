"""POST /chat with a generative model (the fake OpenAI-compatible server): the prompt holds
numbered sources, follow-ups are condensed by the model first, made-up markers are removed,
and every call is metered with its prompt version."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.chat.service import NO_DOCUMENTS
from mainsail.settings import Settings
from tests.chat.conftest import ask, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Fault, Reply
from tests.fixtures.app import wait_until
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import BAKING, SAILING


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, chat={"model": "fake-gpt"}, jobs=QUICK_JOBS
    )


def user_text(call_body: dict[str, object]) -> str:
    messages = call_body["messages"]
    assert isinstance(messages, list)
    return str(messages[-1]["content"])


async def test_the_model_gets_numbered_sources_and_made_up_markers_are_removed(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(Reply("Pay out five to seven times the depth [1]. Or not [9]."))
    body = (await ask(client, alice.headers, question="How much anchor chain?")).json()
    assert body["model"] == "fake-gpt"
    assert body["answer"] == "Pay out five to seven times the depth [1]. Or not."
    assert body["removed_citations"] == 1
    assert [c["marker"] for c in body["citations"]] == [1]
    assert "chain" in body["citations"][0]["quote"]
    (call,) = fake_provider.calls
    sent = user_text(call.body)
    assert sent.startswith("Sources:\n[1] (sailing.md")
    assert sent.rstrip().endswith("Question: How much anchor chain?")
    assert call.body["messages"][0]["role"] == "system"  # type: ignore[index]
    assert "[1]" in str(call.body["messages"][0]["content"])  # type: ignore[index]
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["cost_usd"] != "0.00000000"

    # The answer's usage names its request; the usage event of its model call carries it.
    assert body["usage"]["request_id"]

    async def metered() -> bool:
        async with app.state.db.engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT kind, prompt_version FROM usage_events"
                    " WHERE user_id = :u AND request_id = :r"
                ),
                {"u": alice.id, "r": body["usage"]["request_id"]},
            )
            return [tuple(r) for r in rows] == [("chat", "answer@1")]

    await wait_until(metered, within_s=5, interval=0.05)


async def test_a_nul_in_the_model_s_answer_is_dropped_not_blamed_on_the_caller(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(Reply("Pay out five\x00 to seven times the depth [1]."))
    answered = await ask(client, alice.headers, question="How much anchor chain?")
    assert answered.status_code == 200, answered.text
    assert answered.json()["answer"] == "Pay out five to seven times the depth [1]."


async def test_a_follow_up_is_condensed_by_the_model_before_searching(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Laminate butter with three folds [1]."),
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
    assert follow["standalone_question"] == "How long should croissants proof?"
    assert follow["usage"]["model_calls"] == 2
    condense_call, answer_call = fake_provider.calls[1:]
    assert "Last question: And how long do they proof?" in user_text(condense_call.body)
    assert "How are croissants made?" in user_text(condense_call.body)
    # The answer call carries the history, then the sources and the question as asked.
    roles = [m["role"] for m in answer_call.body["messages"]]  # type: ignore[union-attr]
    assert roles == ["system", "user", "assistant", "user"]
    assert "croissants" in follow["sources"][0]["title"] or follow["citations"]
    assert user_text(answer_call.body).rstrip().endswith("Question: And how long do they proof?")


async def test_a_follow_up_after_the_documents_are_gone_costs_no_model_call(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    document = await ingest(alice, BAKING, "baking.md")
    fake_provider.script(Reply("Laminate butter with three folds [1]."))
    first = (await ask(client, alice.headers, question="How are croissants made?")).json()
    deleted = await client.delete(f"/documents/{document}", headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    follow = await ask(
        client,
        alice.headers,
        question="And how long do they proof?",
        conversation_id=first["conversation_id"],
    )
    assert follow.status_code == 200, follow.text
    assert follow.json()["answer"] == NO_DOCUMENTS
    assert follow.json()["usage"]["model_calls"] == 0
    assert len(fake_provider.calls) == 1  # the first answer only: nothing condensed


async def test_a_stream_whose_model_fails_before_its_first_token_is_an_http_error(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """The answer's call is opened before the stream starts, so a provider that is down (or
    a quota refusal) is the HTTP error it is, not an error event after a 200."""
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(Fault("server_error"), Fault("server_error"), Fault("server_error"))
    response = await client.post(
        "/chat/stream", json={"question": "How do I anchor?"}, headers=alice.headers
    )
    assert response.status_code == 502, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    # Nothing is stored: a retry asks once, in one conversation.
    listed = (await client.get("/conversations", headers=alice.headers)).json()
    assert listed["items"] == []


async def test_a_stream_cut_after_its_first_tokens_ends_with_an_error_event(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(Fault("cut_stream", after_chunks=2))
    response = await client.post(
        "/chat/stream", json={"question": "How do I anchor?"}, headers=alice.headers
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0][0] == "retrieval"
    assert [name for name, _ in events[1:-1]] == ["token", "token"]
    assert events[-1][0] == "error"
    assert events[-1][1]["status"] >= 500
    assert "done" not in [name for name, _ in events]
    # The question is kept (the first event named its conversation), with no answer.
    listed = (await client.get("/conversations", headers=alice.headers)).json()
    detail = (
        await client.get(f"/conversations/{listed['items'][0]['id']}", headers=alice.headers)
    ).json()
    assert [m["role"] for m in detail["messages"]] == ["user"]
