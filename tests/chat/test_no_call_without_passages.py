"""No paid call for a question nothing can answer: with no documents, or none the filters
select, neither the query embedding (a provider embedder bills it) nor a condensing call is
made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.chat.service import NO_DOCUMENTS, NOTHING_IN_SCOPE
from mainsail.settings import Settings
from tests.chat.conftest import ask, sse_events
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.gateway import gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import SAILING

EMBEDDER = "text-embedding-3-small"


class TestWithAProviderEmbedder:
    """Search embeds with a catalogue embedding model through the gateway (billed)."""

    @pytest.fixture
    def catalogue_file(self, tmp_path: Path, fake_provider: FakeProviderServer) -> Path:
        return write_embedding_catalogue(tmp_path, fake_provider)

    @pytest.fixture
    def settings(self, database_url: URL, catalogue_file: Path) -> Settings:
        return gateway_settings(
            database_url,
            catalogue_file,
            chat={"model": "fake-gpt"},
            documents={"embedder": EMBEDDER},
            jobs=QUICK_JOBS,
        )

    @pytest.mark.parametrize("path", ["/chat", "/chat/stream"])
    async def test_with_no_documents_no_model_is_called_not_even_the_embedder(
        self,
        path: str,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: Account,
        bob: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        """README: "with no documents ... the answer says so and no model is called". Bob has
        no documents (alice's make the active index version); his question must not be
        embedded through the provider, billed to him, to search nothing."""
        await ingest(alice, SAILING, "sailing.md")
        before = len(fake_provider.calls)
        response = await client.post(
            path, json={"question": "How do I anchor?"}, headers=bob.headers
        )
        assert response.status_code == 200, response.text
        if path == "/chat":
            assert response.json()["answer"] == NO_DOCUMENTS
        else:
            assert sse_events(response.text)[-2][1]["answer"] == NO_DOCUMENTS
        await asyncio.sleep(0.3)  # usage events are written in the background
        async with app.state.db.engine.connect() as connection:
            billed = await connection.scalar(
                text("SELECT count(*) FROM usage_events WHERE user_id = :u"), {"u": bob.id}
            )
        assert [c.path for c in fake_provider.calls[before:]] == []
        assert billed == 0

    async def test_a_search_of_nothing_embeds_no_query(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        bob: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        await ingest(alice, SAILING, "sailing.md")
        before = len(fake_provider.calls)
        for who, filters in ((bob, {}), (alice, {"collections": ["none"]})):
            found = await client.post(
                "/search",
                json={"query": "anchor", "mode": "vector", "filters": filters},
                headers=who.headers,
            )
            assert found.status_code == 200, found.text
            assert found.json()["results"] == []
        assert [c.path for c in fake_provider.calls[before:]] == []
        found = await client.post(
            "/search", json={"query": "anchor", "mode": "vector"}, headers=alice.headers
        )
        assert found.json()["results"]
        assert [c.path for c in fake_provider.calls[before:]] == ["/v1/embeddings"]


class TestWithAModel:
    @pytest.fixture
    def settings(self, database_url: URL, catalogue_file: Path) -> Settings:
        return gateway_settings(
            database_url, catalogue_file, chat={"model": "fake-gpt"}, jobs=QUICK_JOBS
        )

    async def test_a_follow_up_whose_filters_match_nothing_makes_no_model_call(
        self,
        client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        """docs/architecture.md: "No documents (or none in the filters) ...: a fixed answer,
        no model call". The conversation's filters match none of alice's documents: its first
        turn is the fixed answer with no call, but a follow-up pays a condensing call first
        and then gives the same fixed answer."""
        await ingest(alice, SAILING, "sailing.md")
        fake_provider.script(Reply("How do I anchor in sand?"))
        first = await ask(
            client, alice.headers, question="How do I anchor?", filters={"collections": ["none"]}
        )
        assert first.json()["answer"] == NOTHING_IN_SCOPE
        follow = await ask(
            client,
            alice.headers,
            question="And in sand?",
            conversation_id=first.json()["conversation_id"],
        )
        assert follow.status_code == 200, follow.text
        assert follow.json()["answer"] == NOTHING_IN_SCOPE
        assert fake_provider.count("/chat/completions") == 0
        assert follow.json()["usage"]["model_calls"] == 0
