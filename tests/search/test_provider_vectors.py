"""Provider embedders and index versions when the provider answers vectors that cannot
be used (wrong length, NaN), and versions of models whose vectors the index cannot hold."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.core.db import Database
from mainsail.documents.runtime import start_documents
from mainsail.llm.errors import UpstreamBadResponse
from mainsail.llm.factory import build_gateway
from mainsail.search.indexing import IndexVersions
from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, wait_for_status
from tests.fakes import provider_server
from tests.fakes.provider_server import FakeProviderServer
from tests.fixtures.gateway import BEDROCK_ON, gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import BAKING, SAILING

MODEL = "text-embedding-3-small"
KELP = "Kelp forests shelter otters and urchins along cold coasts."


def poisoned(marker: str, value: float) -> Any:
    """The fake's embedding, with ``value`` in every component for texts holding ``marker``."""
    original = provider_server.fake_embedding

    def embedding(model: str, text: str, dimension: int) -> list[float]:
        if marker in text:
            return [value] * dimension
        return original(model, text, dimension)

    return embedding


@pytest.fixture
async def raw_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that gets the 500 a real one would, instead of the app's exception."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def vector_search(client: httpx.AsyncClient, account: Account, query: str) -> httpx.Response:
    return await client.post(
        "/search", json={"query": query, "mode": "vector"}, headers=account.headers
    )


class TestAProviderEmbedderServesSearch:
    """The active version embeds with a catalogue model (``documents.embedder``)."""

    @pytest.fixture
    def settings(
        self, database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
    ) -> Settings:
        return gateway_settings(
            database_url,
            write_embedding_catalogue(tmp_path, fake_provider),
            jobs={**QUICK_JOBS, "max_attempts": 2},
            documents={"embedder": MODEL},
        )

    async def test_a_query_vector_of_the_wrong_length_is_a_model_error_not_a_500(
        self,
        monkeypatch: pytest.MonkeyPatch,
        raw_client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        fake_provider: FakeProviderServer,
    ) -> None:
        """The provider answers the query with vectors of another length than the catalogue
        entry (and the version) says: the search is a model error (502 upstream_bad_response,
        as for an unreadable answer), not an unhandled EmbeddingMismatch (500)."""
        await ingest(alice, SAILING, "sailing.md")
        monkeypatch.setattr(fake_provider, "embedding_dimension", 24)  # the catalogue says 48
        response = await vector_search(raw_client, alice, "anchor chain scope")
        assert response.status_code == 502, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_a_version_built_with_another_dimension_is_a_clear_503_not_a_500(
        self, app: FastAPI, raw_client: httpx.AsyncClient, alice: Account, ingest: Ingest
    ) -> None:
        """The catalogue entry's dimension changed after the version was built (here: the
        version and its vectors made 64-dimensional, zeros appended, while the catalogue and
        the provider say 48): pgvector refused to compare the query with them, a 500."""
        await ingest(alice, SAILING, "sailing.md")
        async with app.state.db.engine.begin() as connection:  # built at 64 dimensions
            await connection.execute(text("UPDATE index_versions SET dimension = 64"))
            await connection.execute(
                text(
                    "UPDATE chunks SET embedding ="
                    " CAST(CAST(embedding AS real[]) || array_fill(0::real, ARRAY[16]) AS vector)"
                )
            )
        response = await vector_search(raw_client, alice, "anchor chain scope")
        assert response.status_code == 503, (response.status_code, response.text)
        assert "64 dimensions" in response.json()["detail"]

    @pytest.mark.parametrize("value", [math.nan, 1e39], ids=["nan", "inf"])
    async def test_a_non_finite_query_vector_is_a_model_error_not_a_500(
        self,
        monkeypatch: pytest.MonkeyPatch,
        raw_client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        value: float,
    ) -> None:
        """The provider answers the query with NaN (or infinities: 1e39 is past float32):
        refused as a bad answer (502), not sent to PostgreSQL, whose pgvector refuses it
        ("NaN not allowed in vector"), a 500."""
        await ingest(alice, SAILING, "sailing.md")
        monkeypatch.setattr(provider_server, "fake_embedding", poisoned("anchor", value))
        response = await vector_search(raw_client, alice, "anchor chain scope")
        assert response.status_code == 502, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_a_zero_vector_is_not_stored_to_give_searches_a_null_score(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        ingest: Ingest,
        search: Search,
    ) -> None:
        """A provider's all-zero vector cannot be L2-normalized (ProviderEmbedder promises
        unit rows): stored as it is, every search that reaches the passage answers its
        ``score`` as null (cosine distance to a zero vector is NaN), where the schema says a
        number."""
        monkeypatch.setattr(provider_server, "fake_embedding", poisoned("otters", 0.0))
        uploaded = await client.post(
            "/documents", json={"text": KELP, "filename": "kelp.txt"}, headers=alice.headers
        )
        assert uploaded.status_code in (200, 202), uploaded.text
        await wait_for_status(client, alice, uploaded.json()["id"], "ready", "failed")
        await ingest(alice, SAILING, "sailing.md")
        for mode in ("vector", "hybrid"):
            response = await search(alice, "sailing anchor", mode=mode)
            assert response.status_code == 200, response.text
            scores = [hit["score"] for hit in response.json()["results"]]
            assert all(isinstance(score, float) for score in scores), (mode, scores)


class TestAProviderVersionBuildingBesideTheLocalOne:
    """The active version is the local model's; an admin builds one of a catalogue model."""

    @pytest.fixture
    def settings(
        self, database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
    ) -> Settings:
        return gateway_settings(
            database_url,
            write_embedding_catalogue(tmp_path, fake_provider),
            jobs={**QUICK_JOBS, "max_attempts": 2},
        )

    async def test_an_upload_is_not_failed_by_a_building_version_whose_vectors_are_wrong(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
        search: Search,
        fake_provider: FakeProviderServer,
    ) -> None:
        """Only the active version's write can fail an upload (docs/architecture.md, Index
        versions): a version no search reads yet whose provider answers vectors of the wrong
        length lists the document in its progress.errors, and the upload is ready, as when
        that provider is down."""
        await ingest(alice, BAKING, "baking.md")
        release = asyncio.Event()

        async def held(self: IndexVersions, ctx: Any, spec: Any) -> None:
            await release.wait()  # a long build: still copying the corpus

        monkeypatch.setattr(IndexVersions, "_build", held)
        created = await client.post(
            "/admin/index-versions", json={"embedder": MODEL}, headers=admin.headers
        )
        assert created.status_code == 202, created.text
        monkeypatch.setattr(fake_provider, "embedding_dimension", 24)  # catalogue says 48
        try:
            uploaded = await client.post(
                "/documents", json={"text": KELP, "filename": "kelp.txt"}, headers=alice.headers
            )
            assert uploaded.status_code in (200, 202), uploaded.text
            document = await wait_for_status(
                client, alice, uploaded.json()["id"], "ready", "failed"
            )
        finally:
            release.set()
        assert document["status"] == "ready", document["error"]
        body = (await search(alice, "kelp otters", mode="keyword")).json()
        assert body["results"][0]["document_id"] == uploaded.json()["id"]


BIG = """
[models.big-embed]
provider = "fake-openai"
model = "text-embedding-3-large"
kind = "embedding"
dimension = 3072
input_per_mtok = 0.13
context_window = 8191
"""


class TestAVersionOfAModelWithMoreThan2000Dimensions:
    """text-embedding-3-large (3072 dimensions, in the default catalogue) as an index
    version's embedder, with HNSW indexes from the start (``search.exact_below`` 0)."""

    @pytest.fixture
    def settings(
        self, database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
    ) -> Settings:
        catalogue = write_embedding_catalogue(tmp_path, fake_provider)
        catalogue.write_text(catalogue.read_text() + BIG)
        return gateway_settings(
            database_url,
            catalogue,
            jobs={**QUICK_JOBS, "max_attempts": 2},
            search={"exact_below": 0},
        )

    async def test_a_version_of_3072_dimensions_is_built_or_refused_up_front(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        admin: Account,
        ingest: Ingest,
        search: Search,
        fake_provider: FakeProviderServer,
    ) -> None:
        """pgvector's HNSW index holds at most 2000 dimensions: creating such a version is a
        422 naming the limit (it was accepted, every document embedded and paid for, and then
        failed at the end of its build with "Gave up after 2 attempts: InternalError")."""
        await ingest(admin, SAILING, "sailing.md")
        monkeypatch.setattr(fake_provider, "embedding_dimension", 3072)
        before = fake_provider.count()
        created = await client.post(
            "/admin/index-versions", json={"embedder": "big-embed"}, headers=admin.headers
        )
        assert created.status_code == 422, created.text
        assert "2000" in created.json()["detail"]
        assert fake_provider.count() == before


async def test_a_documents_embedder_of_more_than_2000_dimensions_stops_start_up(
    database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
) -> None:
    """``documents.embedder`` naming a 3072-dimension model stops start-up with the reason
    (every upload failed once the first version's vector index was built)."""
    catalogue = write_embedding_catalogue(tmp_path, fake_provider)
    catalogue.write_text(catalogue.read_text() + BIG)
    settings = gateway_settings(database_url, catalogue, documents={"embedder": "big-embed"})
    gateway, adapters = build_gateway(settings.llm, environ={})
    db = Database(database_url, settings.database)
    try:
        with pytest.raises(LookupError, match="at most 2000"):
            await start_documents(settings, db, gateway)
    finally:
        await db.engine.dispose()
        for adapter in adapters:
            await adapter.aclose()


@pytest.mark.usefixtures("fake_aws_credentials")
class TestTitanVectorsOfTwoLengths:
    """Bedrock Titan embeds one text per InvokeModel, 64 to a gateway batch; the pipeline
    hands a provider embedder ``documents.embed_window`` (256) chunks per call."""

    @pytest.fixture
    def settings(
        self, database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
    ) -> Settings:
        return gateway_settings(
            database_url, write_embedding_catalogue(tmp_path, fake_provider), llm=BEDROCK_ON
        )

    async def test_a_short_vector_in_a_later_batch_is_a_model_error(
        self, monkeypatch: pytest.MonkeyPatch, app: FastAPI, fake_provider: FakeProviderServer
    ) -> None:
        """One vector shorter than the rest is a bad answer from the provider whichever
        batch it is in (in a later one than the first 64, numpy's concatenate raised a bare
        ValueError: a 500 on /v1/embeddings; for a version being built, an upload that failed
        instead of being listed in progress.errors)."""
        original = provider_server.fake_embedding

        def short_for_marked(model: str, text: str, dimension: int) -> list[float]:
            return original(model, text, dimension - 1 if "marked" in text else dimension)

        monkeypatch.setattr(provider_server, "fake_embedding", short_for_marked)
        embedder = app.state.documents.embedders.provider("fake-titan")
        texts = [f"passage number {i}" for i in range(64)] + ["the marked passage"]
        with pytest.raises(UpstreamBadResponse):
            await embedder.embed_async(texts)
