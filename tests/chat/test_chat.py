"""POST /chat with no language model configured: the extractive model answers from the
retrieved passages, with citations that point at real chunks and quotes that occur in them."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from mainsail.chat.service import NO_DOCUMENTS, NOTHING_IN_SCOPE
from tests.chat.conftest import ask, sse_events
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import ASTRONOMY, BAKING, SAILING


async def stored_chunk(app: FastAPI, chunk_id: int) -> dict[str, object]:
    async with app.state.db.engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT document_id, text, char_start FROM chunks WHERE id = :id"),
                {"id": chunk_id},
            )
        ).one()
        return dict(row._mapping)


async def test_an_answer_cites_real_chunks_with_verified_quotes(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    sailing = await ingest(alice, SAILING, "sailing.md")
    await ingest(alice, BAKING, "baking.md")
    response = await ask(
        client, alice.headers, question="How much chain should I pay out when anchoring?"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "extractive"
    assert body["prompt_version"] == "answer@1"
    assert "[1]" in body["answer"] or "[2]" in body["answer"]
    assert body["removed_citations"] == 0
    assert body["citations"]
    assert body["citations"][0]["document_id"] == sailing
    for citation in body["citations"]:
        chunk = await stored_chunk(app, citation["chunk_id"])
        assert str(chunk["document_id"]) == citation["document_id"]
        quote = citation["quote"]
        assert quote
        assert quote in str(chunk["text"])
        start = citation["quote_start"] - int(chunk["char_start"])  # type: ignore[call-overload]
        assert str(chunk["text"])[start : start + len(quote)] == quote
        assert f"[{citation['marker']}]" in body["answer"]
        assert citation["marker"] <= len(body["sources"])
    assert body["usage"]["model_calls"] == 1
    assert body["usage"]["prompt_tokens_budgeted"] > 0


async def test_with_no_documents_the_answer_says_so_without_a_model_call(
    client: httpx.AsyncClient, alice: Account, bob: Account, ingest: Ingest
) -> None:
    await ingest(alice, SAILING, "sailing.md")  # someone else's documents do not count
    body = (await ask(client, bob.headers, question="How do I anchor?")).json()
    assert body["answer"] == NO_DOCUMENTS
    assert body["citations"] == []
    assert body["sources"] == []
    assert body["usage"]["model_calls"] == 0
    assert body["model"] == "none"


async def test_filters_that_exclude_everything_say_so(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    body = (
        await ask(
            client,
            alice.headers,
            question="How do I anchor?",
            filters={"collections": ["elsewhere"]},
        )
    ).json()
    assert body["answer"] == NOTHING_IN_SCOPE
    assert body["usage"]["model_calls"] == 0


async def test_a_conversation_keeps_its_turns_and_condenses_follow_ups(
    client: httpx.AsyncClient, alice: Account, bob: Account, ingest: Ingest
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    await ingest(alice, ASTRONOMY, "astronomy.md")
    first = (await ask(client, alice.headers, question="What lights show at night?")).json()
    conversation = first["conversation_id"]
    follow = (
        await ask(
            client, alice.headers, question="And what is logged?", conversation_id=conversation
        )
    ).json()
    assert follow["conversation_id"] == conversation
    # Without a generative model the follow-up is searched together with the last question.
    assert follow["standalone_question"] == "What lights show at night? And what is logged?"
    listed = (await client.get("/conversations", headers=alice.headers)).json()
    assert listed["total"] == 1
    assert listed["items"][0]["title"] == "What lights show at night?"
    detail = (await client.get(f"/conversations/{conversation}", headers=alice.headers)).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["messages"][1]["citations"] == first["citations"]
    assert detail["messages"][1]["usage"]["model"] == "extractive"
    # bob can neither read nor continue nor delete it.
    assert (
        await client.get(f"/conversations/{conversation}", headers=bob.headers)
    ).status_code == 404
    theirs = await ask(client, bob.headers, question="Hi?", conversation_id=conversation)
    assert theirs.status_code == 404
    assert (
        await client.delete(f"/conversations/{conversation}", headers=bob.headers)
    ).status_code == 404
    assert (await client.get("/conversations", headers=bob.headers)).json()["total"] == 0
    deleted = await client.delete(f"/conversations/{conversation}", headers=alice.headers)
    assert deleted.status_code == 204
    gone = await client.get(f"/conversations/{conversation}", headers=alice.headers)
    assert gone.status_code == 404


async def test_conversations_are_paginated_most_recent_first(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    ids = []
    for i in range(3):
        ids.append((await ask(client, alice.headers, question=f"Anchor question {i}?")).json())
    page = (await client.get("/conversations?limit=2", headers=alice.headers)).json()
    assert page["total"] == 3
    assert [c["id"] for c in page["items"]] == [
        ids[2]["conversation_id"],
        ids[1]["conversation_id"],
    ]
    rest = (await client.get("/conversations?limit=2&offset=2", headers=alice.headers)).json()
    assert [c["id"] for c in rest["items"]] == [ids[0]["conversation_id"]]


async def test_the_stream_sends_retrieval_tokens_and_the_cited_answer(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest
) -> None:
    await ingest(alice, ASTRONOMY, "astronomy.md")
    response = await client.post(
        "/chat/stream",
        json={"question": "What decides how faint a star I can see?"},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "retrieval"
    assert names[-2:] == ["answer", "done"]
    assert "token" in names
    retrieval = events[0][1]
    assert retrieval["sources"]
    answer = events[-2][1]
    assert answer["conversation_id"] == retrieval["conversation_id"]
    streamed = "".join(data["text"] for name, data in events if name == "token")
    assert streamed == answer["answer"]  # nothing was removed, so the two agree
    assert answer["citations"]
    assert "aperture" in " ".join(c["quote"] for c in answer["citations"]).lower()


async def test_stream_errors_before_the_first_event_are_plain_http_errors(
    client: httpx.AsyncClient, alice: Account
) -> None:
    response = await client.post(
        "/chat/stream",
        json={"question": "Hi?", "conversation_id": str(uuid.uuid4())},
        headers=alice.headers,
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_bad_input(client: httpx.AsyncClient, alice: Account) -> None:
    for body in (
        {"question": ""},
        {"question": "  "},
        {"question": "\u200b\u200d\ufeff"},
        {"question": "x" * 8001},
        {"q": "hi"},
    ):
        response = await client.post("/chat", json=body, headers=alice.headers)
        assert response.status_code == 422, body
        assert response.headers["content-type"].startswith("application/problem+json")
    unknown_model = await ask(client, alice.headers, question="Hi?", model="no-such-model")
    assert unknown_model.status_code == 404
    assert unknown_model.json()["code"] == "model_not_found"
    unknown_conversation = await ask(
        client, alice.headers, question="Hi?", conversation_id=str(uuid.uuid4())
    )
    assert unknown_conversation.status_code == 404
    assert (await client.post("/chat", json={"question": "Hi?"})).status_code == 401
