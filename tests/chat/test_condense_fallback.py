"""A follow-up whose condensing call answers nothing visible (a zero-width space, a BOM, a
control character) is searched with the question as asked, not a 500."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.chat.conftest import ask, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import gateway_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import BAKING


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, chat={"model": "fake-gpt"}, jobs=QUICK_JOBS
    )


@pytest.mark.parametrize("path", ["/chat", "/chat/stream"])
async def test_an_invisible_condensed_question_falls_back_to_the_question(
    path: str,
    client: httpx.AsyncClient,
    alice: Account,
    ingest: Ingest,
    fake_provider: FakeProviderServer,
) -> None:
    await ingest(alice, BAKING, "baking.md")
    fake_provider.script(
        Reply("Laminate butter with three folds [1]."),
        Reply(" \u200b\ufeff\x01 "),
        Reply("Until they wobble [1]."),
    )
    first = (await ask(client, alice.headers, question="How are croissants made?")).json()
    follow = await client.post(
        path,
        json={
            "question": "And how long do croissants proof?",
            "conversation_id": first["conversation_id"],
        },
        headers=alice.headers,
    )
    assert follow.status_code == 200, follow.text
    body = follow.json() if path == "/chat" else sse_events(follow.text)[-2][1]
    assert body["standalone_question"] == "And how long do croissants proof?"
    assert body["answer"] == "Until they wobble [1]."
