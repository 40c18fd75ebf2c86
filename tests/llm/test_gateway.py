"""What the gateway refuses before any upstream call, and what it switches on from env."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from mainsail.llm.catalogue import CatalogueError, ModelEntry, load_catalogue
from mainsail.llm.errors import InvalidChatRequest, ModelNotFound, ProviderNotConfigured
from mainsail.llm.factory import Providers, build_gateway
from mainsail.llm.gateway import CallContext
from mainsail.llm.types import (
    ChatRequest,
    Message,
    SamplingParams,
    ToolChoice,
    ToolDefinition,
    Usage,
)
from mainsail.settings import LLMSettings
from tests.fakes.provider_server import FakeProviderServer
from tests.llm.conftest import MakeGateway

CTX = CallContext()


def ask(model: str = "fake-gpt", text: str = "hi", **kwargs: object) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", content=text),), **kwargs)  # type: ignore[arg-type]


async def test_unknown_model_lists_the_available_ones(make_gateway: MakeGateway) -> None:
    gateway, _ = await make_gateway()
    with pytest.raises(ModelNotFound) as caught:
        await gateway.complete(ask("gpt-7"), CTX)
    assert "fake-gpt" in caught.value.available
    assert "extractive" in caught.value.available


def test_catalogue_models_are_off_until_their_provider_is_configured() -> None:
    gateway, _ = build_gateway(LLMSettings(use_standard_env=False), environ={})
    names = {m.name for m in gateway.available_models()}
    assert names == {"extractive"}
    with pytest.raises(ProviderNotConfigured) as caught:
        gateway.resolve("gpt-4o-mini")
    assert "OPENAI_API_KEY" in caught.value.message


@pytest.mark.parametrize(
    ("environ", "model"),
    [
        ({"OPENAI_API_KEY": "sk-test"}, "gpt-4o-mini"),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"}, "gpt-4o-mini"),
        ({"ANTHROPIC_API_KEY": "sk-ant-test"}, "claude-haiku-4-5"),
        (
            {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "x"},
            "bedrock-nova-micro",
        ),
    ],
)
def test_standard_environment_variables_switch_providers_on(
    environ: dict[str, str], model: str
) -> None:
    gateway, _ = build_gateway(LLMSettings(), environ=environ)
    assert gateway.resolve(model).name == model
    assert model in {m.name for m in gateway.available_models()}


def test_bedrock_stays_off_without_visible_credentials(tmp_path: Path) -> None:
    gateway, _ = build_gateway(
        LLMSettings(), environ={"AWS_REGION": "us-east-1", "HOME": str(tmp_path)}
    )
    with pytest.raises(ProviderNotConfigured):
        gateway.resolve("bedrock-nova-micro")


async def test_too_long_for_the_context_window_is_refused_before_any_call(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    with pytest.raises(InvalidChatRequest) as caught:
        await gateway.complete(ask(text="word " * 5000), CTX)
    assert caught.value.error_code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert fake_provider.count() == 0


async def test_max_tokens_beyond_the_model_is_refused(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    with pytest.raises(InvalidChatRequest) as caught:
        await gateway.complete(ask(params=SamplingParams(max_tokens=5000)), CTX)
    assert caught.value.param == "max_tokens"
    assert fake_provider.count() == 0


@pytest.mark.parametrize(
    "tool",
    [
        ToolDefinition(name="bad name!", parameters={"type": "object"}),
        ToolDefinition(name="t", parameters={"type": "not-a-type"}),
        ToolDefinition(name="t", parameters={"properties": {"a": {"minimum": "zero"}}}),
    ],
)
async def test_invalid_tools_are_refused_before_any_call(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer, tool: ToolDefinition
) -> None:
    gateway, _ = await make_gateway()
    with pytest.raises(InvalidChatRequest) as caught:
        await gateway.complete(ask(tools=(tool,)), CTX)
    assert caught.value.param == "tools"
    assert fake_provider.count() == 0


async def test_missing_max_tokens_is_filled_with_the_models_limit(
    make_gateway: MakeGateway, fake_provider: FakeProviderServer
) -> None:
    gateway, _ = await make_gateway()
    await gateway.complete(ask(), CTX)
    assert fake_provider.calls[-1].body["max_tokens"] == 1000


def test_cost_prices_cached_and_cache_write_tokens_separately() -> None:
    entry = ModelEntry(
        name="m",
        provider="p",
        model="m",
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        cached_input_per_mtok=Decimal("0.3"),
        cache_write_per_mtok=Decimal("3.75"),
    )
    usage = Usage(
        input_tokens=1000, output_tokens=100, cached_input_tokens=600, cache_write_tokens=300
    )
    # 100 plain at $3, 600 cached at $0.30, 300 written at $3.75, 100 out at $15 (per million)
    expected = (100 * 3 + 600 * Decimal("0.3") + 300 * Decimal("3.75") + 100 * 15) / Decimal(10**6)
    assert entry.cost_usd(usage) == expected


def test_shipped_catalogue_has_current_models_with_prices() -> None:
    catalogue = load_catalogue()
    mini = catalogue.models["gpt-4o-mini"]
    assert (mini.input_per_mtok, mini.output_per_mtok) == (Decimal("0.15"), Decimal("0.60"))
    assert {"claude-haiku-4-5", "bedrock-nova-micro", "extractive"} <= set(catalogue.models)
    assert all(e.provider in catalogue.providers for e in catalogue.models.values())


def test_user_catalogue_overrides_adds_and_removes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "providers:\n  ollama: {kind: openai, base_url: 'http://127.0.0.1:11434/v1'}\n"
        "models:\n"
        "  llama: {provider: ollama, model: 'llama3.1:8b', context_window: 131072}\n"
        "  gpt-4o: {enabled: false}\n"
        "  gpt-4o-mini: {provider: openai, model: gpt-4o-mini, input_per_mtok: 0.1,"
        " output_per_mtok: 0.4}\n"
    )
    catalogue = load_catalogue(path)
    assert catalogue.models["llama"].provider == "ollama"
    assert "gpt-4o" not in catalogue.models
    assert catalogue.models["gpt-4o-mini"].input_per_mtok == Decimal("0.1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[models.x]\nprovider = "nowhere"\n', "unknown provider"),
        ('[models.x]\nprovider = "openai"\nfallbacks = ["y"]\n', "unknown fallback"),
        ('[models.x]\nprovider = "openai"\ninput_per_mtok = -1\n', "negative"),
        ('[models.x]\nprovider = "openai"\ncolour = "red"\n', "unknown fields"),
        ('[providers.p]\nkind = "telepathy"\n', "kind must be one of"),
        ('[providers.p]\nkind = "openai"\ntransport = "pigeon"\n', "transport is for"),
        ('[providers.p]\nkind = "anthropic"\ntransport = "sdk"\n', "transport is for"),
    ],
)
def test_invalid_catalogues_name_the_entry(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(path)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": (ToolDefinition(name="t", parameters={"type": "object"}),) * 2}, "tools"),
        (
            {
                "tools": (ToolDefinition(name="t", parameters={"type": "object"}),),
                "tool_choice": ToolChoice(mode="tool", name="other"),
            },
            "tool_choice",
        ),
        ({"tools": (ToolDefinition(name="t", parameters={"type": "array"}),)}, "tools"),
    ],
)
async def test_inconsistent_tool_requests_are_refused_locally(
    make_gateway: MakeGateway,
    fake_provider: FakeProviderServer,
    kwargs: dict[str, object],
    param: str,
) -> None:
    gateway, _ = await make_gateway()
    with pytest.raises(InvalidChatRequest) as caught:
        await gateway.complete(ask(**kwargs), CTX)
    assert caught.value.param == param
    assert fake_provider.count() == 0


def test_an_anthropic_error_event_inside_a_stream_is_the_providers_failure() -> None:
    import anthropic
    import httpx2

    from mainsail.llm.errors import UpstreamRateLimited, UpstreamUnavailable
    from mainsail.llm.providers.anthropic import map_anthropic_error

    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1/v1/messages"))

    def in_stream(kind: str) -> anthropic.APIStatusError:
        body = {"type": "error", "error": {"type": kind, "message": "secret upstream text"}}
        return anthropic.APIStatusError("x", response=response, body=body)

    overloaded = map_anthropic_error(in_stream("overloaded_error"), provider="a", model="m")
    assert isinstance(overloaded, UpstreamUnavailable)
    assert overloaded.retryable
    assert "secret upstream text" not in overloaded.message
    limited = map_anthropic_error(in_stream("rate_limit_error"), provider="a", model="m")
    assert isinstance(limited, UpstreamRateLimited)


def test_retry_after_in_http_date_form_is_understood() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    import httpx2

    from mainsail.llm.providers.base import retry_after

    when = datetime.now(UTC) + timedelta(seconds=30)
    headers = {"retry-after": format_datetime(when, usegmt=True)}
    waited = retry_after(httpx2.Response(429, headers=headers))
    assert waited is not None
    assert 25 <= waited <= 31


async def test_openai_providers_send_chat_directly_unless_the_catalogue_asks_for_the_sdk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[providers.lean]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "k"\n'
        '[providers.sdk]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "k"\n'
        'transport = "sdk"\n'
        '[models.a]\nprovider = "lean"\n[models.b]\nprovider = "sdk"\n'
    )
    _, adapters = build_gateway(LLMSettings(catalogue_file=path, use_standard_env=False))
    by_name = {adapter.name: adapter for adapter in adapters}
    try:
        assert getattr(by_name["lean"], "wire", None) is not None
        assert getattr(by_name["sdk"], "wire", "missing") is None
    finally:
        for adapter in adapters:
            await adapter.aclose()


def test_a_custom_anthropic_endpoint_never_gets_the_real_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[providers.proxy]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9/"\n'
        '[models.via-proxy]\nprovider = "proxy"\nmodel = "claude"\n'
    )
    gateway, _ = build_gateway(
        LLMSettings(catalogue_file=path), environ={"ANTHROPIC_API_KEY": "sk-ant-real"}
    )
    with pytest.raises(ProviderNotConfigured):
        gateway.resolve("via-proxy")


@pytest.mark.parametrize(
    ("firmware", "extra_env", "on"),
    [
        ({"sys/devices/virtual/dmi/id/sys_vendor": "Amazon EC2\n"}, {}, True),
        ({"sys/devices/virtual/dmi/id/board_asset_tag": "i-0123456789abcdef0\n"}, {}, True),
        ({"sys/hypervisor/uuid": "ec2e1916-9099-7caf-fd21-012345abcdef\n"}, {}, True),
        (
            {"sys/devices/virtual/dmi/id/sys_vendor": "Amazon EC2\n"},
            {"AWS_EC2_METADATA_DISABLED": "true"},
            False,
        ),
        ({"sys/devices/virtual/dmi/id/sys_vendor": "QEMU\n"}, {}, False),
        ({}, {}, False),
    ],
)
def test_bedrock_comes_on_with_a_region_on_an_ec2_instance(
    tmp_path: Path, firmware: dict[str, str], extra_env: dict[str, str], on: bool
) -> None:
    """An instance role is read by the SDK's credential chain from instance metadata; the
    instance itself is recognized from its firmware, without a network probe."""
    for path, content in firmware.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    home = tmp_path / "home"
    home.mkdir()
    environ = {"AWS_REGION": "eu-west-1", "HOME": str(home), **extra_env}
    providers = Providers(LLMSettings(), environ, root=tmp_path)
    built = providers.build(load_catalogue(None).provider("bedrock"))
    assert isinstance(built, list) is not on
