"""Gateway.embed: OpenAI (and compatible) and Bedrock Titan embeddings through the same path as
chat completions (resolve, check, reserve, resilience stack, settle, meter), against the fake
provider on real HTTP (boto3 pointed at it with endpoint_url for Bedrock)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from mainsail.llm.catalogue import CatalogueError, ModelEntry, load_catalogue
from mainsail.llm.errors import (
    CircuitOpen,
    EmbeddingsUnsupported,
    InvalidChatRequest,
    ModelNotFound,
    UpstreamRejected,
    WrongModelKind,
)
from mainsail.llm.gateway import CallContext, Gateway, Reservation
from mainsail.llm.providers.scripted import ScriptedAdapter
from mainsail.llm.tokens import count_tokens
from mainsail.llm.types import ChatRequest, EmbeddingRequest, Message
from tests.fakes.provider_server import FakeProviderServer, Fault, Reply, fake_embedding
from tests.fixtures.gateway import BEDROCK_ON, write_embedding_catalogue
from tests.llm.conftest import MakeGateway

CTX = CallContext(kind="test.embeddings")


@pytest.fixture
def catalogue_file(tmp_path: Path, fake_provider: FakeProviderServer) -> Path:
    return write_embedding_catalogue(tmp_path, fake_provider)


def expected(model: str, texts: list[str], dimension: int) -> np.ndarray:
    return np.asarray([fake_embedding(model, text, dimension) for text in texts], np.float32)


class RecordingQuota:
    """A QuotaGuard that keeps what it was asked: holds, and what they were settled to."""

    def __init__(self) -> None:
        self.reserved: list[tuple[int, Decimal]] = []
        self.settled: list[tuple[int, Decimal]] = []

    async def reserve(self, ctx: CallContext, *, tokens: int, cost: Decimal) -> Reservation:
        self.reserved.append((tokens, cost))
        return Reservation(user_id=ctx.user_id, tokens=tokens, cost=cost)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: Decimal) -> None:
        self.settled.append((tokens, cost))


async def test_openai_embeddings_are_vectors_in_order_with_usage_metered_once(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    texts = ["the tide turns", "a lantern on the reef", "calm"]
    response = await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=tuple(texts)), CTX)
    dimension = fake_provider.embedding_dimension
    assert response.vectors.dtype == np.float32
    assert response.vectors.shape == (3, dimension)
    np.testing.assert_allclose(
        response.vectors, expected("fake-embedding-model", texts, dimension), rtol=1e-6
    )
    assert (response.model, response.provider) == ("fake-embed", "fake-openai")
    assert response.usage.input_tokens == 3 + 5 + 1  # the fake counts words
    assert not response.usage.estimated
    (call,) = fake_provider.calls
    assert call.path == "/v1/embeddings"
    assert call.body["encoding_format"] == "base64"  # a quarter of the bytes of JSON numbers
    assert call.body["input"] == texts
    assert "dimensions" not in call.body
    (event,) = sink.events
    assert (event.status, event.kind, event.model, event.provider) == (
        "ok",
        "test.embeddings",
        "fake-embed",
        "fake-openai",
    )
    assert (event.tokens_in, event.tokens_out) == (9, 0)
    assert event.cost_usd == Decimal(9) / Decimal(10**6)


async def test_the_budget_holds_the_input_worst_case_then_settles_to_the_real_use(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    quota = RecordingQuota()
    gateway.quota = quota
    texts = ("one two three four", "five six")
    fake_provider.script(Reply(input_tokens=5))
    await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=texts), CTX)
    held = Gateway._hold(sum(count_tokens(text) for text in texts))
    assert quota.reserved == [(held, Decimal(held) / Decimal(10**6))]  # input price only
    assert quota.settled == [(5, Decimal(5) / Decimal(10**6))]


async def test_a_server_error_is_retried_and_the_call_metered_once(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Fault("server_error"), Fault("rate_limit", retry_after=0))
    response = await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=("hello",)), CTX)
    assert response.vectors.shape[0] == 1
    assert fake_provider.count("/v1/embeddings") == 3
    (event,) = sink.events
    assert (event.status, event.tokens_in) == ("ok", 1)


async def test_a_rejected_request_is_not_retried_and_releases_its_hold(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    quota = RecordingQuota()
    gateway.quota = quota
    fake_provider.script(Fault("bad_request"))
    with pytest.raises(UpstreamRejected):
        await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=("hello",)), CTX)
    assert fake_provider.count() == 1
    assert quota.settled == [(0, Decimal(0))]
    (event,) = sink.events
    assert (event.status, event.error_code, event.tokens_in) == ("error", "upstream_rejected", 0)


async def test_the_breaker_opens_on_a_failing_embedding_model(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway(max_attempts=1, breaker_failures=2)
    fake_provider.script(Fault("server_error"), Fault("server_error"))
    request = EmbeddingRequest(model="fake-embed", inputs=("hello",))
    for _ in range(2):
        with pytest.raises(Exception, match="failed"):
            await gateway.embed(request, CTX)
    with pytest.raises(CircuitOpen):
        await gateway.embed(request, CTX)
    assert fake_provider.count() == 2  # the open breaker called nobody
    assert [e.error_code for e in sink.events] == [
        "upstream_unavailable",
        "upstream_unavailable",
        "circuit_open",
    ]


async def test_a_chat_model_named_for_embeddings_is_refused_and_back(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    with pytest.raises(WrongModelKind) as caught:
        await gateway.embed(EmbeddingRequest(model="fake-gpt", inputs=("hi",)), CTX)
    assert "is a chat model" in caught.value.message
    assert {"fake-embed", "text-embedding-3-small"} <= set(caught.value.available)
    assert "fake-gpt" not in caught.value.available
    chat = ChatRequest(model="fake-embed", messages=(Message(role="user", content="hi"),))
    with pytest.raises(WrongModelKind, match="is an embedding model; this call needs a chat"):
        await gateway.complete(chat, CTX)
    with pytest.raises(ModelNotFound):
        await gateway.embed(EmbeddingRequest(model="no-such-model", inputs=("hi",)), CTX)
    assert fake_provider.count() == 0
    assert sink.events == []


@pytest.mark.parametrize(
    ("inputs", "dimensions", "param", "code"),
    [
        ((), None, "input", "invalid_request"),
        (("fine", ""), None, "input", "invalid_request"),
        (("word " * 600,), None, "input", "context_length_exceeded"),
        (("fine",), 4096, "dimensions", "invalid_request"),
    ],
)
async def test_what_cannot_work_is_refused_before_any_upstream_call(
    make_gateway: MakeGateway,
    fake_provider: FakeProviderServer,
    inputs: tuple[str, ...],
    dimensions: int | None,
    param: str,
    code: str,
) -> None:
    gateway, sink = await make_gateway()
    request = EmbeddingRequest(model="fake-embed", inputs=inputs, dimensions=dimensions)
    with pytest.raises(InvalidChatRequest) as caught:
        await gateway.embed(request, CTX)
    assert (caught.value.param, caught.value.error_code) == (param, code)
    assert fake_provider.count() == 0
    assert sink.events == []


async def test_dimensions_are_passed_on(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    request = EmbeddingRequest(model="fake-embed", inputs=("short",), dimensions=8)
    response = await gateway.embed(request, CTX)
    assert response.vectors.shape == (1, 8)
    assert fake_provider.calls[0].body["dimensions"] == 8


async def test_more_inputs_than_one_request_takes_go_in_several(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    texts = [f"text number {i}" for i in range(2050)]
    response = await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=tuple(texts)), CTX)
    sizes = [len(call.body["input"]) for call in fake_provider.calls]
    assert sizes == [2048, 2]
    np.testing.assert_allclose(
        response.vectors[[0, 2047, 2048, 2049]],
        expected("fake-embedding-model", [texts[i] for i in (0, 2047, 2048, 2049)], 48),
        rtol=1e-6,
    )
    (event,) = sink.events  # one call, one event, however many requests it took
    assert event.tokens_in == 3 * 2050


async def test_requests_also_stay_under_the_providers_token_limit(
    make_gateway: MakeGateway,
) -> None:
    gateway, _ = await make_gateway()
    entry = gateway.resolve("fake-embed", kind="embedding")
    assert gateway._embed_batches(entry, [200_000, 90_000, 20_000, 5]) == [(0, 2), (2, 4)]
    titan = gateway.catalogue.models["fake-titan"]
    assert gateway._embed_batches(titan, [1] * 130) == [(0, 64), (64, 128), (128, 130)]


async def test_a_provider_without_usage_is_estimated(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway()
    fake_provider.script(Reply(report_usage=False))
    text = "an OpenAI-compatible server that reports no usage"
    response = await gateway.embed(EmbeddingRequest(model="fake-embed", inputs=(text,)), CTX)
    assert response.usage.input_tokens == count_tokens(text)
    assert response.usage.estimated
    assert sink.events[0].estimated


# --- Bedrock Titan ---------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_aws_credentials")
async def test_titan_embeds_one_text_per_invoke_all_at_once(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway(**BEDROCK_ON)
    texts = [f"passage {i} about the harbour" for i in range(70)]
    response = await gateway.embed(EmbeddingRequest(model="fake-titan", inputs=tuple(texts)), CTX)
    np.testing.assert_allclose(
        response.vectors, expected("amazon.titan-embed-text-v2:0", texts, 48), rtol=1e-6
    )
    calls = fake_provider.calls
    assert len(calls) == 70
    assert {call.path for call in calls} == {"/model/amazon.titan-embed-text-v2:0/invoke"}
    assert sorted(call.body["inputText"] for call in calls) == sorted(texts)
    assert all(call.body["normalize"] is True for call in calls)
    assert all(call.headers["authorization"].startswith("AWS4-HMAC-SHA256") for call in calls)
    (event,) = sink.events
    assert (event.status, event.provider, event.tokens_in) == ("ok", "fake-bedrock", 5 * 70)
    assert event.cost_usd == Decimal(350) / Decimal(10**6)


@pytest.mark.usefixtures("fake_aws_credentials")
async def test_titan_throttling_is_retried(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway(**BEDROCK_ON)
    fake_provider.script(Fault("rate_limit"))
    request = EmbeddingRequest(model="fake-titan", inputs=("one text",), dimensions=16)
    response = await gateway.embed(request, CTX)
    assert response.vectors.shape == (1, 16)
    assert fake_provider.count() == 2
    assert fake_provider.calls[-1].body["dimensions"] == 16
    assert [e.status for e in sink.events] == ["ok"]


@pytest.mark.usefixtures("fake_aws_credentials")
async def test_titan_validation_error_fails_the_call(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, sink = await make_gateway(**BEDROCK_ON)
    fake_provider.script(Fault("bad_request"))
    with pytest.raises(UpstreamRejected):
        await gateway.embed(EmbeddingRequest(model="fake-titan", inputs=("a", "b", "c")), CTX)
    (event,) = sink.events
    assert (event.status, event.error_code) == ("error", "upstream_rejected")


# --- the catalogue and the adapters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[models.x]\nprovider = "anthropic"\nkind = "embedding"\n',
            "has no embeddings",
        ),
        (
            '[models.x]\nprovider = "openai"\nkind = "embedding"\nfallbacks = ["y"]\n'
            '[models.y]\nprovider = "openai"\nkind = "embedding"\n',
            "cannot have fallbacks",
        ),
        (
            '[models.x]\nprovider = "openai"\nfallbacks = ["text-embedding-3-small"]\n',
            "is not a chat model",
        ),
        ('[models.x]\nprovider = "openai"\ndimension = 8\n', "for embeddings"),
    ],
)
def test_the_catalogue_refuses_embedding_entries_that_cannot_work(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text(extra)
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(path)


def test_shipped_embedding_models_know_their_dimension() -> None:
    models = load_catalogue().models
    dimensions = {name: m.dimension for name, m in models.items() if m.kind == "embedding"}
    assert dimensions == {
        "text-embedding-3-small": 1536,
        "text-embedding-3-large": 3072,
        "bedrock-titan-embed-v2": 1024,
    }


async def test_providers_without_embeddings_say_so() -> None:
    entry = ModelEntry(name="s", provider="scripted", model="s", kind="embedding")
    with pytest.raises(EmbeddingsUnsupported, match="has no embeddings"):
        await ScriptedAdapter().embed(EmbeddingRequest(model="s", inputs=("x",)), entry)
