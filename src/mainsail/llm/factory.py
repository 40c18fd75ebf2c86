"""Builds the gateway from settings: which providers are configured, and the resilience stack
around each catalogue model."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from mainsail.core.cache import open_cache
from mainsail.llm.cache import ResponseCache
from mainsail.llm.catalogue import Catalogue, ModelEntry, ProviderSpec, load_catalogue
from mainsail.llm.gateway import Gateway, QuotaGuard, UsageSink
from mainsail.llm.providers.base import ProviderAdapter, Timeouts
from mainsail.llm.resilience import (
    Bounded,
    Breaker,
    Deadline,
    Fallback,
    ModelClient,
    ProviderModel,
    Retrying,
)
from mainsail.settings import LLMSettings, ResponseCacheSettings

_AWS_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


class Providers:
    """Turns provider specs into adapters, or says which settings would switch one on."""

    def __init__(
        self, settings: LLMSettings, environ: Mapping[str, str], root: Path = Path("/")
    ) -> None:
        self.settings = settings
        self.root = root  # where /sys is read from (tests)
        self.environ = environ  # variables a catalogue provider names itself are always read
        self.env = environ if settings.use_standard_env else {}
        self.timeouts = Timeouts(
            connect_s=settings.connect_timeout_s,
            read_s=settings.read_timeout_s,
            total_s=settings.timeout_s,
        )

    def _secret(self, value: object, env_name: str) -> str | None:
        configured = getattr(value, "get_secret_value", lambda: None)()
        return configured or self.env.get(env_name) or None

    def build(self, spec: ProviderSpec) -> ProviderAdapter | list[str]:
        """An adapter, or the list of settings that would configure this provider."""
        s = self.settings
        connections = s.max_concurrency_per_provider
        if spec.kind == "extractive":
            from mainsail.llm.providers.extractive import ExtractiveAdapter

            return ExtractiveAdapter()
        if spec.kind == "scripted":
            from mainsail.llm.providers.scripted import ScriptedAdapter

            if s.scripted_file is not None:
                return ScriptedAdapter.from_file(s.scripted_file)
            return ScriptedAdapter(name=spec.name)
        if spec.kind == "openai":
            if spec.name == "openai":
                key = self._secret(s.openai_api_key, "OPENAI_API_KEY")
                base = s.openai_base_url or self.env.get("OPENAI_BASE_URL")
                missing = ["OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)"]
            else:
                key = self._own_key(spec)
                base = spec.base_url
                missing = [spec.api_key_env or f"providers.{spec.name}.base_url"]
            if not key and not base:
                return missing
            from mainsail.llm.providers.openai import OpenAIAdapter

            return OpenAIAdapter(
                name=spec.name,
                api_key=key or "not-needed",  # local compatible servers take any key
                base_url=base,
                timeouts=self.timeouts,
                max_connections=connections,
                transport=spec.transport,
            )
        if spec.kind == "anthropic":
            if spec.name == "anthropic":
                key = self._secret(s.anthropic_api_key, "ANTHROPIC_API_KEY")
                missing = ["ANTHROPIC_API_KEY"]
            else:  # never send the real Anthropic key to some other endpoint
                key = self._own_key(spec)
                missing = [spec.api_key_env or f"providers.{spec.name}.api_key_env"]
            if not key:
                return missing
            from mainsail.llm.providers.anthropic import AnthropicAdapter

            return AnthropicAdapter(
                name=spec.name,
                api_key=key,
                base_url=spec.base_url
                or s.anthropic_base_url
                or self.env.get("ANTHROPIC_BASE_URL"),
                timeouts=self.timeouts,
                max_connections=connections,
            )
        # bedrock, the only kind left
        region = s.aws_region or self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION")
        if s.bedrock == "off" or not region:
            return ["AWS_REGION", "AWS credentials (environment, profile or role)"]
        if s.bedrock == "auto" and not self._aws_credentials_visible():
            return ["AWS credentials (environment, profile or role)"]
        from mainsail.llm.providers.bedrock import BedrockAdapter

        return BedrockAdapter(
            name=spec.name,
            region=region,
            timeouts=self.timeouts,
            max_connections=connections,
            endpoint_url=spec.base_url,
        )

    def _own_key(self, spec: ProviderSpec) -> str | None:
        if spec.api_key_env:
            return self.environ.get(spec.api_key_env) or None
        return spec.api_key

    def _aws_credentials_visible(self) -> bool:
        """Without touching the network (no instance-metadata probe): env vars, ~/.aws, or an
        EC2 instance (whose role the SDK's chain reads), unless AWS_EC2_METADATA_DISABLED."""
        if any(self.env.get(name) for name in _AWS_CREDENTIAL_ENV):
            return True
        home = Path(self.env.get("HOME", "~")).expanduser()
        if (home / ".aws" / "credentials").exists() or (home / ".aws" / "config").exists():
            return True
        metadata_off = self.env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        return not metadata_off and on_ec2(self.root)


def on_ec2(root: Path = Path("/")) -> bool:
    """Whether this is an EC2 instance, from what its firmware tells the kernel (no network):
    Nitro instances report the vendor "Amazon EC2" and their instance id as the board's asset
    tag, Xen ones a hypervisor uuid that starts with "ec2"."""

    def read(path: str) -> str:
        try:
            return (root / path).read_text(errors="replace").strip()
        except OSError:
            return ""

    return (
        read("sys/devices/virtual/dmi/id/sys_vendor") == "Amazon EC2"
        or read("sys/devices/virtual/dmi/id/board_asset_tag").startswith("i-")
        or read("sys/hypervisor/uuid").lower().startswith("ec2")
    )


def response_cache(settings: ResponseCacheSettings) -> ResponseCache | None:
    """The response cache the settings ask for, or None when it is switched off."""
    if not settings.enabled:
        return None
    store = open_cache(
        settings.storage_url,
        prefix=f"{settings.key_prefix}:",
        max_entries=settings.max_entries,
        max_bytes=settings.max_bytes,
    )
    return ResponseCache(
        store,
        ttl_s=settings.ttl_s,
        per_user=settings.per_user,
        max_entry_bytes=settings.max_entry_bytes,
    )


def build_gateway(
    settings: LLMSettings,
    *,
    usage: UsageSink | None = None,
    quota: QuotaGuard | None = None,
    cache: ResponseCache | None = None,
    catalogue: Catalogue | None = None,
    environ: Mapping[str, str] | None = None,
    adapters: dict[str, ProviderAdapter] | None = None,
) -> tuple[Gateway, list[ProviderAdapter]]:
    """The gateway and the adapters it owns (close them at shutdown).

    ``adapters`` replaces the adapter built for a provider name (tests, evals).
    """
    catalogue = catalogue or load_catalogue(settings.catalogue_file)
    providers = Providers(settings, os.environ if environ is None else environ)
    built: dict[str, ProviderAdapter] = dict(adapters or {})
    unconfigured: dict[str, list[str]] = {}
    for name in {entry.provider for entry in catalogue.models.values()}:
        if name in built:
            continue
        result = providers.build(catalogue.provider(name))
        if isinstance(result, list):
            unconfigured[name] = result
        else:
            built[name] = result
    slots = {name: asyncio.Semaphore(settings.max_concurrency_per_provider) for name in built}
    single: dict[str, ModelClient] = {}
    for entry in catalogue.models.values():
        if entry.provider in built:
            single[entry.name] = _resilient(entry, built[entry.provider], slots, settings)
    clients: dict[str, ModelClient] = {}
    for name in single:
        chain = [single[e.name] for e in catalogue.chain(name) if e.name in single]
        clients[name] = chain[0] if len(chain) == 1 else Fallback(chain)
    gateway = Gateway(
        catalogue=catalogue,
        clients=clients,
        unconfigured=unconfigured,
        usage=usage,
        quota=quota,
        cache=cache,
    )
    return gateway, list(built.values())


def _resilient(
    entry: ModelEntry,
    adapter: ProviderAdapter,
    slots: dict[str, asyncio.Semaphore],
    settings: LLMSettings,
) -> ModelClient:
    client: ModelClient = ProviderModel(adapter, entry)
    if entry.provider in ("extractive", "scripted"):
        return client  # local and deterministic: nothing to retry or break
    # The deadline starts once a slot is held: waiting in the queue is not the provider's
    # fault, and must not trip its breaker.
    client = Deadline(
        client,
        total_s=entry.timeout_s or settings.timeout_s,
        stream_total_s=settings.stream_timeout_s,
    )
    client = Bounded(client, slots[entry.provider])
    client = Breaker(
        client, failure_threshold=settings.breaker_failures, reset_after_s=settings.breaker_reset_s
    )
    return Retrying(
        client,
        attempts=settings.max_attempts,
        base_delay_s=settings.retry_base_delay_s,
        max_delay_s=settings.retry_max_delay_s,
        max_retry_after_s=settings.max_retry_after_s,
    )
