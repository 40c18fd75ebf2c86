"""POST /v1/embeddings: the official openai package against Mainsail, Mainsail against the fake
provider (OpenAI's /v1/embeddings, and Bedrock Titan through boto3 on real HTTP)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.fakes.provider_server import FakeProviderServer, Fault, fake_embedding
from tests.fixtures.gateway import BEDROCK_ON, gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account, create_api_key
from tests.openai_compat.conftest import LiveMainsail
from tests.openai_compat.test_sdk import usage_rows

pytestmark = pytest.mark.usefixtures("fake_aws_credentials")


@pytest.fixture
def catalogue_file(tmp_path: Path, fake_provider: FakeProviderServer) -> Path:
    return write_embedding_catalogue(tmp_path, fake_provider)


@pytest.fixture
def settings(database_url: URL, catalogue_file: Path) -> Settings:
    return gateway_settings(database_url, catalogue_file, llm=BEDROCK_ON)


def sdk(live: LiveMainsail, *, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=live.v1, api_key=key or live.api_key, max_retries=0)


@pytest.fixture
async def oai(live: LiveMainsail) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client on the live service, closed on the test's own event loop."""
    async with sdk(live) as client:
        yield client


def vectors_of(model: str, texts: list[str], dimension: int = 48) -> np.ndarray:
    return np.asarray([fake_embedding(model, text, dimension) for text in texts], np.float32)


async def test_sdk_embeddings_with_usage_metered_to_the_caller(
    live: LiveMainsail, oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    texts = ["where the harbour lights are", "storm"]
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    result = await oai.embeddings.create(model="fake-embed", input=texts)
    assert result.model == "fake-embed"
    assert [item.index for item in result.data] == [0, 1]
    got = np.asarray([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, vectors_of("fake-embedding-model", texts), rtol=1e-6)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (6, 6)
    # The caller's key never reaches the provider.
    assert live.api_key not in str(fake_provider.calls[-1].headers)
    (row,) = await usage_rows(live, expect=1)
    assert row["user_id"] == live.user_id
    assert (row["kind"], row["model"], row["status"]) == ("v1.embeddings", "fake-embed", "ok")
    assert (row["tokens_in"], row["tokens_out"]) == (6, 0)
    assert row["cost_usd"] == Decimal(6) / Decimal(10**6)


async def test_float_format_and_a_single_string(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    result = await oai.embeddings.create(
        model="fake-embed", input="one text", encoding_format="float", dimensions=12
    )
    (item,) = result.data
    np.testing.assert_allclose(
        np.asarray(item.embedding, dtype=np.float32),
        vectors_of("fake-embedding-model", ["one text"], 12)[0],
        rtol=1e-6,
    )
    assert fake_provider.calls[-1].body["dimensions"] == 12


async def test_raw_base64_is_little_endian_float32(live: LiveMainsail) -> None:
    async with httpx.AsyncClient(base_url=live.v1) as http:
        response = await http.post(
            "/embeddings",
            json={"model": "fake-embed", "input": ["a b c"], "encoding_format": "base64"},
            headers={"Authorization": f"Bearer {live.api_key}"},
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, vectors_of("fake-embedding-model", ["a b c"])[0])


async def test_titan_on_bedrock_through_the_same_route(
    live: LiveMainsail, oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    texts = ["first passage", "second passage", "third"]
    result = await oai.embeddings.create(model="fake-titan", input=texts, encoding_format="float")
    got = np.asarray([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, vectors_of("amazon.titan-embed-text-v2:0", texts), rtol=1e-6)
    assert fake_provider.count("/invoke") == 3
    (row,) = await usage_rows(live, expect=1)
    assert (row["provider"], row["tokens_in"]) == ("fake-bedrock", 5)


async def test_a_server_error_is_retried_and_metered_once(
    live: LiveMainsail, oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(Fault("server_error"))
    result = await oai.embeddings.create(model="fake-embed", input=["retry me"])
    assert len(result.data) == 1
    assert fake_provider.count("/v1/embeddings") == 2
    rows = await usage_rows(live, expect=1)
    assert [(r["status"], r["tokens_in"]) for r in rows] == [("ok", 2)]


@pytest.mark.parametrize("empty", [[], [""], ""])
async def test_empty_input_is_a_400(
    oai: openai.AsyncOpenAI,
    fake_provider: FakeProviderServer,
    empty: list[str] | str,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.embeddings.create(model="fake-embed", input=empty)
    assert caught.value.code == "invalid_request"
    assert caught.value.param == "input"
    assert fake_provider.count() == 0


async def test_a_chat_model_named_for_embeddings_is_a_clear_400(
    oai: openai.AsyncOpenAI, fake_provider: FakeProviderServer
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.embeddings.create(model="fake-gpt", input=["x"])
    assert caught.value.code == "wrong_model_kind"
    assert caught.value.param == "model"
    assert "is a chat model" in caught.value.message
    assert "fake-embed" in caught.value.message  # what would work
    with pytest.raises(openai.NotFoundError) as unknown:
        await oai.embeddings.create(model="no-such-model", input=["x"])
    assert unknown.value.code == "model_not_found"
    assert fake_provider.count() == 0


async def test_token_arrays_are_refused(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.embeddings.create(model="fake-embed", input=[[1, 2, 3]])
    assert caught.value.code == "invalid_request"


async def test_models_lists_embedding_models_too(oai: openai.AsyncOpenAI) -> None:
    models = {model.id async for model in oai.models.list()}
    assert {"fake-gpt", "fake-embed", "fake-titan", "text-embedding-3-small"} <= models


async def test_credentials_are_required(live: LiveMainsail) -> None:
    async with sdk(live, key="msk_not-a-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.embeddings.create(model="fake-embed", input="x")


# --- budgets and idempotency, in process ------------------------------------------------------


async def test_over_budget_is_429_quota_exceeded_without_an_upstream_call(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    fake_provider: FakeProviderServer,
) -> None:
    await client.put(
        f"/admin/users/{alice.id}/quota", json={"monthly_tokens": 20}, headers=admin.headers
    )
    body = {"model": "fake-embed", "input": ["a text long enough to need more than twenty"] * 3}
    response = await client.post("/v1/embeddings", json=body, headers=alice.headers)
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("quota_exceeded", "insufficient_quota")
    assert int(response.headers["retry-after"]) > 0
    assert fake_provider.count() == 0
    small = await client.post(
        "/v1/embeddings", json={"model": "fake-embed", "input": "fits"}, headers=alice.headers
    )
    assert small.status_code == 200, small.text


async def test_an_idempotency_key_replays_the_first_answer(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    key = (await create_api_key(client, alice))["key"]
    headers = {"X-API-Key": key, "Idempotency-Key": "embed-once"}
    body = {"model": "fake-embed", "input": ["same request"]}
    first = await client.post("/v1/embeddings", json=body, headers=headers)
    again = await client.post("/v1/embeddings", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert fake_provider.count() == 1
