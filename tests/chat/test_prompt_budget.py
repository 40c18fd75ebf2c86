"""POST /chat when passages were found but none fits the model's prompt budget: a clear
answer and no model call (an answer would cite nothing)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.chat.service import NOTHING_FITS
from mainsail.settings import Settings
from tests.chat.conftest import ask, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest

# Passages of ~250 tokens (the local model reads 254), asked with a question of ~150: no
# passage fits a 256-token prompt budget beside the question.
LONG = " ".join(
    f"Anchoring rule {i}: pay out chain of five to seven times the depth of the water."
    for i in range(40)
)
QUESTION = "How much anchor chain? " + "Please answer carefully, precisely and briefly. " * 20


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url,
        catalogue_file,
        chat={"model": "fake-gpt", "max_prompt_tokens": 256},
        jobs=QUICK_JOBS,
        documents={"chunk_size": 250, "chunk_overlap": 0},
    )


async def test_no_passage_fits_the_budget_so_no_model_is_asked(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, fake_provider: FakeProviderServer
) -> None:
    await ingest(alice, LONG, "sailing.md")
    fake_provider.script(Reply("Pay out five to seven times the depth [1]."))
    answered = await ask(client, alice.headers, question=QUESTION)
    assert answered.status_code == 200
    body = answered.json()
    assert (body["answer"], body["sources"], body["citations"]) == (NOTHING_FITS, [], [])
    assert body["dropped_passages"] >= 1
    streamed = await client.post("/chat/stream", json={"question": QUESTION}, headers=alice.headers)
    events = sse_events(streamed.text)
    assert [name for name, _ in events][-2:] == ["answer", "done"]
    assert events[-2][1]["answer"] == NOTHING_FITS
    assert fake_provider.calls == []
