"""Ingestion with a provider embedder (``documents.embedder`` = a catalogue model of kind
embedding): chunks counted in cl100k, embedded through the gateway against the fake provider,
billed and metered to the document's owner; and the registry's async entry point for query
vectors."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.documents.embedders import LOCAL_DIMENSION, LOCAL_MAX_TOKENS, local_name
from mainsail.documents.runtime import start_documents
from mainsail.llm.errors import ModelNotFound, WrongModelKind
from mainsail.llm.gateway import CallContext
from mainsail.llm.tokens import count_tokens
from mainsail.llm.types import EmbeddingRequest
from mainsail.settings import Settings
from mainsail.worker import build_runner, metering
from tests.documents.conftest import QUICK_JOBS, Upload, chunk_rows, essay, wait_for_status
from tests.fakes.provider_server import FakeProviderServer, Fault, fake_embedding
from tests.fixtures.gateway import gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account
from tests.search.test_index_versions import wait_for_version

MODEL = "text-embedding-3-small"


@pytest.fixture
def catalogue_file(tmp_path: Path, fake_provider: FakeProviderServer) -> Path:
    # text-embedding-3-small on the fake server, with the fake's dimension.
    return write_embedding_catalogue(tmp_path, fake_provider)


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(
        database_url, catalogue_file, jobs=QUICK_JOBS, documents={"embedder": MODEL}
    )


async def usage_rows(app: FastAPI, *, expect: int) -> list[dict[str, Any]]:
    for _ in range(100):
        async with app.state.db.engine.connect() as connection:
            result = await connection.execute(
                text("SELECT * FROM usage_events ORDER BY created_at")
            )
            rows = [dict(row) for row in result.mappings()]
        if len(rows) >= expect:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expect} usage events, found {len(rows)}")


async def stored_vector(app: FastAPI, document_id: str, ordinal: int) -> np.ndarray:
    async with app.state.db.engine.connect() as connection:
        literal = await connection.scalar(
            text("SELECT embedding::text FROM chunks WHERE document_id = :d AND ordinal = :o"),
            {"d": document_id, "o": ordinal},
        )
    return np.asarray(json.loads(literal), dtype=np.float32)


async def test_a_document_is_embedded_through_the_gateway_and_billed_to_its_owner(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    fake_provider: FakeProviderServer,
) -> None:
    created = await upload(alice, essay(30).encode(), "voyage.txt")
    assert created.status_code == 202, created.text
    document = created.json()
    ready = await wait_for_status(client, alice, document["id"], "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    chunks = await chunk_rows(app, document["id"])
    assert ready["chunk_count"] == len(chunks) > 3
    assert {c["dims"] for c in chunks} == {fake_provider.embedding_dimension}
    # Chunked by cl100k tokens (OpenAI's embedding encoding), not MiniLM word pieces.
    assert all(c["token_count"] == count_tokens(c["text"]) <= 200 for c in chunks)
    first = await stored_vector(app, document["id"], 0)
    want = fake_embedding(MODEL, chunks[0]["text"], fake_provider.embedding_dimension)
    np.testing.assert_allclose(first, want, atol=1e-6)
    async with app.state.db.engine.connect() as connection:
        version = (
            (await connection.execute(text("SELECT embedder, dimension FROM index_versions")))
            .mappings()
            .one()
        )
    assert (version["embedder"], version["dimension"]) == (MODEL, 48)
    sent = [t for call in fake_provider.calls for t in call.body["input"]]
    assert sorted(sent) == sorted(c["text"] for c in chunks)  # each chunk embedded once
    rows = await usage_rows(app, expect=len(fake_provider.calls))
    assert {(r["user_id"], r["kind"], r["model"], r["status"]) for r in rows} == {
        (alice.id, "ingest", MODEL, "ok")
    }
    assert {r["request_id"] for r in rows} == {document["job_id"]}
    tokens = sum(max(len(c["text"].split()), 1) for c in chunks)  # the fake counts words
    assert sum(r["tokens_in"] for r in rows) == tokens
    assert sum(r["cost_usd"] for r in rows) == Decimal(tokens) * Decimal("0.02") / 10**6
    await app.state.quota.drain()
    async with app.state.db.engine.connect() as connection:
        used = await connection.scalar(
            text("SELECT tokens_used FROM quota_counters WHERE user_id = :u"), {"u": alice.id}
        )
    assert used == tokens  # reserved against the owner's budget and settled to the real use


async def test_a_provider_failure_is_retried_inside_the_job(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    upload: Upload,
    fake_provider: FakeProviderServer,
) -> None:
    fake_provider.script(Fault("server_error"))
    created = await upload(alice, essay(6, seed=3).encode(), "short.txt")
    ready = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert ready["status"] == "ready", ready["error"]
    assert fake_provider.count("/v1/embeddings") == 2
    job = (await client.get(f"/jobs/{created.json()['job_id']}", headers=alice.headers)).json()
    assert job["attempts"] == 1  # the gateway retried; the job did not have to
    rows = await usage_rows(app, expect=1)
    assert [r["status"] for r in rows] == ["ok"]


async def test_an_owner_over_budget_gets_a_failed_document_and_no_upstream_call(
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    upload: Upload,
    fake_provider: FakeProviderServer,
) -> None:
    await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 10}, headers=admin.headers
    )
    created = await upload(alice, essay(6).encode(), "over.txt")
    failed = await wait_for_status(client, alice, created.json()["id"], "ready", "failed")
    assert failed["status"] == "failed"
    assert "monthly budget" in failed["error"]
    job = (await client.get(f"/jobs/{created.json()['job_id']}", headers=alice.headers)).json()
    assert (job["state"], job["attempts"]) == ("failed", 1)  # not retried: it cannot help
    assert fake_provider.count() == 0


async def test_query_vectors_come_from_the_registry_entry_point(
    app: FastAPI, alice: Account, fake_provider: FakeProviderServer
) -> None:
    embedders = app.state.documents.embedders
    ctx = CallContext(user_id=alice.id, kind="search", role="user", request_id="q-1")
    vectors = await embedders.embed(MODEL, ["where is the beacon"], ctx=ctx)
    assert vectors.dtype == np.float32
    want = fake_embedding(MODEL, "where is the beacon", 48)
    np.testing.assert_allclose(vectors[0], want, atol=1e-6)
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0)
    unbilled = await embedders.embed(MODEL, ["asked by the service"], ctx=None)
    assert unbilled.shape == (1, 48)
    rows = await usage_rows(app, expect=2)
    assert [(r["user_id"], r["kind"], r["request_id"]) for r in rows] == [
        (alice.id, "search", "q-1"),
        (None, "embeddings", None),
    ]
    local = await embedders.embed(local_name(quantized=True), ["where is the beacon"], ctx=ctx)
    assert local.shape == (1, LOCAL_DIMENSION)
    assert fake_provider.count() == 2  # the local model called nobody


async def test_start_up_refuses_an_embedder_that_cannot_work(
    app: FastAPI, settings: Settings
) -> None:
    def with_embedder(name: str) -> Settings:
        documents = settings.documents.model_copy(update={"embedder": name})
        return settings.model_copy(update={"documents": documents})

    with pytest.raises(WrongModelKind, match="is a chat model"):
        await start_documents(with_embedder("fake-gpt"), app.state.db, app.state.gateway)
    with pytest.raises(ModelNotFound):
        await start_documents(with_embedder("no-such-model"), app.state.db, app.state.gateway)
    with pytest.raises(LookupError, match="no model gateway"):
        await start_documents(settings, app.state.db)
    kit = await start_documents(settings, app.state.db, app.state.gateway)
    assert kit.max_tokens == 8191  # a chunk may fill the provider model's context window


async def test_a_worker_process_builds_its_own_metered_gateway(
    app: FastAPI, settings: Settings, alice: Account, fake_provider: FakeProviderServer
) -> None:
    async with AsyncExitStack() as stack:
        meter = await metering(settings, app.state.db, stack)
        assert meter is not None
        await build_runner(settings, app.state.db, meter.gateway)  # the embedder resolves
        ctx = CallContext(user_id=alice.id, kind="ingest", role="user")
        request = EmbeddingRequest(model=MODEL, inputs=("from a worker",))
        await meter.gateway.embed(request, ctx)
        await meter.flush()  # written now, not on the next timer
        (row,) = await usage_rows(app, expect=1)
        assert (row["user_id"], row["kind"], row["tokens_in"]) == (alice.id, "ingest", 3)
    local = settings.documents.model_copy(update={"embedder": "local"})
    async with AsyncExitStack() as stack:
        assert (
            await metering(settings.model_copy(update={"documents": local}), app.state.db, stack)
            is None
        )


async def test_an_upload_chunk_size_is_capped_for_a_version_of_a_smaller_model(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, admin: Account, upload: Upload
) -> None:
    """An upload's chunk_size is checked against the model of its day (this provider reads
    8,191 tokens); a version of the local model, built later, cuts the same document at what
    that model reads (254 word pieces), never into chunks it would embed truncated."""
    created = await upload(
        alice, essay(400).encode(), "long.txt", chunk_size="1000", chunk_overlap="100"
    )
    assert created.status_code == 202, created.text
    document_id = created.json()["id"]
    await wait_for_status(client, alice, document_id, "ready")
    provider_sizes = [row["token_count"] for row in await chunk_rows(app, document_id)]
    assert max(provider_sizes) > 300  # the upload's size held under the provider model

    version = await client.post(
        "/admin/index-versions",
        json={"embedder": local_name(quantized=True)},
        headers=admin.headers,
    )
    assert version.status_code == 202, version.text
    version_id = version.json()["id"]
    await wait_for_version(client, admin, version_id, "ready")
    local = [
        row for row in await chunk_rows(app, document_id) if row["index_version"] == version_id
    ]
    assert local
    assert max(row["token_count"] for row in local) <= LOCAL_MAX_TOKENS - 2
    assert all(row["dims"] == LOCAL_DIMENSION for row in local)
