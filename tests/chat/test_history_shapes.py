"""What a follow-up sends to a strict provider (Anthropic's Messages API, Bedrock's Converse)
over a conversation's life. Those APIs refuse (HTTP 400 / ValidationException) a message list
whose first turn is the assistant's, and any turn with no content or with blank text; OpenAI
accepts both, so these states only fail when the chat's model is an Anthropic or Bedrock one
(or a fallback to one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.chat.answering import Source, pack
from mainsail.chat.service import NO_DOCUMENTS
from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.providers import bedrock
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import ChatRequest, Message, SamplingParams
from mainsail.settings import Settings
from tests.chat.conftest import ask
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Fault, RecordedCall, Reply
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import SAILING


@pytest.fixture
def chat_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path, chat_overrides: dict[str, Any]) -> Settings:
    return gateway_settings(
        database_url,
        catalogue_file,
        llm={"breaker_failures": 10},
        chat={"model": "fake-claude", **chat_overrides},
        jobs=QUICK_JOBS,
    )


def anthropic_problems(call: RecordedCall) -> list[str]:
    """What Anthropic's Messages API would refuse in this recorded request's message list."""
    messages = call.body["messages"]
    problems = []
    if not messages or messages[0]["role"] != "user":
        problems.append(f"first turn is {messages[0]['role'] if messages else 'missing'}")
    for i, message in enumerate(messages):
        if i and message["role"] == messages[i - 1]["role"]:
            problems.append(f"messages.{i}: roles do not alternate")
        content = message["content"]
        if not content:
            problems.append(f"messages.{i}: empty content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "text" and not block["text"].strip():
                problems.append(f"messages.{i}: blank text block")
    return problems


def answer_calls(fake: FakeProviderServer) -> list[RecordedCall]:
    """The answer calls (not the condensing ones): their last turn carries the sources."""
    return [
        c
        for c in fake.calls
        if c.path.endswith("/v1/messages") and "Sources:" in str(c.body["messages"][-1]["content"])
    ]


# --- an empty answer in the history ---------------------------------------------------------


@pytest.mark.parametrize(
    "first_answer",
    [
        "",  # the model answered nothing (a refusal, content filtered)
        "  \n",  # whitespace only
        "[7]",  # only a marker naming no passage: removed, the stored answer is empty
    ],
)
async def test_an_empty_answer_in_the_history_is_not_sent_as_an_empty_assistant_turn(
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
    first_answer: str,
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(
        Reply(first_answer),
        Reply("How much anchor chain should I pay out?"),
        Reply("Five to seven times the depth [1]."),
    )
    first = await ask(client, alice.headers, question="How much anchor chain?")
    assert first.status_code == 200, first.text
    follow = await ask(
        client,
        alice.headers,
        question="And on coral?",
        conversation_id=first.json()["conversation_id"],
    )
    assert follow.status_code == 200, follow.text
    call = answer_calls(fake_provider)[-1]
    assert anthropic_problems(call) == [], call.body["messages"]


async def test_the_services_own_fixed_answers_are_not_shown_to_the_model(
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    """Asked before any document was ready, the answer was the service's "no documents";
    a follow-up once there are documents does not show the model that as its own answer."""
    first = await ask(client, alice.headers, question="How much anchor chain?")
    assert first.json()["answer"] == NO_DOCUMENTS
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(
        Reply("How much anchor chain should I pay out?"), Reply("Five to seven times [1].")
    )
    follow = await ask(
        client,
        alice.headers,
        question="And on coral?",
        conversation_id=first.json()["conversation_id"],
    )
    assert follow.status_code == 200, follow.text
    sent = [call.body for call in fake_provider.calls if call.path.endswith("/v1/messages")]
    assert sent
    assert all("no documents to answer from" not in str(body) for body in sent)
    assert anthropic_problems(answer_calls(fake_provider)[-1]) == []


# --- a history that starts with an answer ---------------------------------------------------


async def test_a_history_window_never_starts_with_an_answer_after_a_cut_stream(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """Default settings (history_messages=10). A stream cut before its answer leaves its
    question alone in the conversation; four turns later the last ten messages begin with
    the answer before that question, and it is sent as the first turn."""
    await ingest(alice, SAILING, "sailing.md")
    first = await ask(client, alice.headers, question="How do I anchor?")
    conversation = first.json()["conversation_id"]
    fake_provider.script(Reply("How do I keep a night watch?"), Fault("cut_stream", after_chunks=1))
    cut = await client.post(
        "/chat/stream",
        json={"question": "And at night?", "conversation_id": conversation},
        headers=alice.headers,
    )
    assert cut.status_code == 200
    assert '"error"' in cut.text or "event: error" in cut.text
    for n in range(5):
        answered = await ask(
            client, alice.headers, question=f"Tell me more, part {n}?", conversation_id=conversation
        )
        assert answered.status_code == 200, answered.text
    detail = (await client.get(f"/conversations/{conversation}", headers=alice.headers)).json()
    assert len(detail["messages"]) == 13  # u a u(cut) then five pairs
    for call in answer_calls(fake_provider):
        assert anthropic_problems(call) == [], call.body["messages"]


@pytest.mark.parametrize("chat_overrides", [{"history_messages": 3}])
async def test_an_odd_history_messages_setting_does_not_send_an_answer_first(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """MAINSAIL_CHAT__HISTORY_MESSAGES accepts any count from 0 to 200; with an odd one, every
    follow-up after the second starts its history with an answer whose question was cut off."""
    await ingest(alice, SAILING, "sailing.md")
    first = await ask(client, alice.headers, question="How do I anchor?")
    conversation = first.json()["conversation_id"]
    for question in ("On coral?", "And in mud?"):
        answered = await ask(client, alice.headers, question=question, conversation_id=conversation)
        assert answered.status_code == 200, answered.text
    call = answer_calls(fake_provider)[-1]
    assert anthropic_problems(call) == [], call.body["messages"]


LONG_QUESTION = "How do I anchor my boat? " + "Please explain every single step in detail. " * 60
LONG_ANSWER = "Use zebraquartz chain [1]. " + "Keep it taut. " * 75


@pytest.mark.parametrize(
    "chat_overrides", [{"history_tokens": 6000, "max_prompt_tokens": 800, "condense": False}]
)
async def test_pack_trimming_the_history_does_not_keep_an_answer_without_its_question(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    """pack() trims the history oldest message first to fit the prompt budget: dropping a long
    question keeps its answer, which then opens the message list (and reads as an answer to
    nothing; the history's own trimming takes a question's answer along)."""
    await ingest(alice, SAILING, "sailing.md")
    fake_provider.script(Reply(LONG_ANSWER), Reply("Back down gently [1]."))
    first = await ask(client, alice.headers, question=LONG_QUESTION)
    assert first.status_code == 200, first.text
    assert first.json()["sources"], first.json()
    follow = await ask(
        client,
        alice.headers,
        question="And how do I set it?",
        conversation_id=first.json()["conversation_id"],
    )
    assert follow.status_code == 200, follow.text
    assert follow.json()["sources"], follow.json()  # answered by the model
    _, call = answer_calls(fake_provider)
    assert "explain every single step" not in str(call.body)  # the question was trimmed...
    assert anthropic_problems(call) == [], call.body["messages"]
    assert "zebraquartz" not in str(call.body)  # ...and so should its answer be


def test_pack_keeps_no_answer_whose_question_it_trimmed() -> None:
    """pack() alone: the history is [long question, long answer, question, answer], over the
    budget with the long question, within it without."""
    source = Source(
        chunk_id=1,
        document_id="d",
        title="sailing.md",
        filename="sailing.md",
        text="Back down gently under engine to set the anchor.",
        page=None,
        page_end=None,
        heading=(),
        char_start=0,
        char_end=48,
        score=1.0,
    )
    history = [
        Message(role="user", content=LONG_QUESTION),
        Message(role="assistant", content=LONG_ANSWER),
        Message(role="user", content="On coral?"),
        Message(role="assistant", content="Never on coral [1]."),
    ]
    packed = pack(
        question="And how do I set it?",
        history=history,
        candidates=[source],
        budget=800,
        count=count_message_tokens,
    )
    assert packed.sources  # it is answered
    roles = [m.role for m in packed.messages]
    assert roles[1] == "user", roles  # after the system prompt, a question first
    assert not any("zebraquartz" in (m.content or "") for m in packed.messages)


# --- the adapter the same messages reach on Bedrock -------------------------------------------


def test_bedrock_converse_gets_no_leading_answer_nor_blank_turn_from_a_chat_history() -> None:
    """Converse refuses a first turn that is the assistant's ("A conversation must start with
    a user message") and a blank text block ("The text field in the ContentBlock object is
    blank"). The chat's history reaches it as stored: an empty answer, an answer first."""
    entry = ModelEntry(
        name="claude-bedrock",
        provider="bedrock",
        model="anthropic.claude-3-haiku",
        context_window=4000,
        max_output_tokens=1000,
    )
    request = ChatRequest(
        model="claude-bedrock",
        messages=(
            Message(role="system", content="Answer from the sources."),
            Message(role="assistant", content="Five to seven times the depth [1]."),
            Message(role="user", content="On coral?"),
            Message(role="assistant", content=""),
            Message(role="user", content="Sources:\n[1] ...\n\nQuestion: And in mud?"),
        ),
        params=SamplingParams(max_tokens=100),
    )
    messages = bedrock._arguments(request, entry)["messages"]
    assert messages[0]["role"] == "user", messages
    for message in messages:
        assert message["content"], messages
        assert all(block.get("text", "x").strip() for block in message["content"]), messages
