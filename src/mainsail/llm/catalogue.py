"""The model catalogue: public model name -> provider, provider model id, prices, limits, fallbacks.

The shipped catalogue (``default_catalogue.toml``) is merged with an optional user file (TOML or
YAML) whose entries replace shipped ones by name, or remove them with ``enabled = false``. The
user file may also declare extra OpenAI-compatible providers (Ollama, vLLM, LM Studio, Azure):

    [providers.ollama]
    kind = "openai"
    base_url = "http://127.0.0.1:11434/v1"
    api_key_env = "OLLAMA_API_KEY"   # optional; or api_key = "..." inline
    transport = "sdk"                # optional: chat through the SDK's client, not "direct"

    [models."llama3.1"]
    provider = "ollama"
    model = "llama3.1:8b"

    [models."nomic-embed-text"]   # an embedding model: kind and the vectors' dimension
    provider = "ollama"
    kind = "embedding"
    dimension = 768
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from mainsail.llm.types import Usage
from mainsail.settings import LLMSettings, SettingsError

ProviderKind = Literal["openai", "anthropic", "bedrock", "scripted", "extractive"]
ModelKind = Literal["chat", "embedding"]
# How an OpenAI-kind provider's chat requests travel: straight over aiohttp (the default; a
# fraction of the SDK's per-call CPU) or through the SDK's client. Embeddings always use the SDK.
OpenAITransport = Literal["direct", "sdk"]
_TRANSPORTS: tuple[OpenAITransport, ...] = ("direct", "sdk")
# Provider kinds whose adapters can embed (OpenAI and compatible servers; Titan on Bedrock).
EMBEDDING_PROVIDERS: frozenset[ProviderKind] = frozenset({"openai", "bedrock"})
BUILTIN_PROVIDERS: dict[str, ProviderKind] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "bedrock": "bedrock",
    "scripted": "scripted",
    "extractive": "extractive",
}
_MTOK = Decimal(1_000_000)


class CatalogueError(ValueError):
    """The catalogue file is invalid; the message names the entry and the field."""


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)  # prefer api_key_env
    transport: OpenAITransport = "direct"  # kind "openai" only


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    provider: str
    model: str
    kind: ModelKind = "chat"
    input_per_mtok: Decimal = Decimal(0)
    output_per_mtok: Decimal = Decimal(0)
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    context_window: int = 8192
    max_output_tokens: int = 4096
    timeout_s: float | None = None
    fallbacks: tuple[str, ...] = ()
    dimension: int | None = None  # embedding models: length of the vectors they return

    def cost_usd(self, usage: Usage) -> Decimal:
        """Exact cost: cached and cache-write input tokens at their own prices where known."""
        cached = usage.cached_input_tokens
        written = usage.cache_write_tokens
        plain = max(usage.input_tokens - cached - written, 0)
        cached_price = self.cached_input_per_mtok
        write_price = self.cache_write_per_mtok
        total = (
            plain * self.input_per_mtok
            + cached * (cached_price if cached_price is not None else self.input_per_mtok)
            + written * (write_price if write_price is not None else self.input_per_mtok)
            + usage.output_tokens * self.output_per_mtok
        )
        return total / _MTOK


@dataclass(frozen=True)
class Catalogue:
    models: dict[str, ModelEntry]
    providers: dict[str, ProviderSpec] = field(default_factory=dict)

    def get(self, name: str) -> ModelEntry | None:
        return self.models.get(name)

    def provider(self, name: str) -> ProviderSpec:
        return self.providers[name]

    def chain(self, name: str) -> list[ModelEntry]:
        """The model and its fallbacks, depth first, each once, unknown names skipped."""
        seen: list[str] = []

        def visit(current: str) -> None:
            if current in seen or current not in self.models:
                return
            seen.append(current)
            for fallback in self.models[current].fallbacks:
                visit(fallback)

        visit(name)
        return [self.models[n] for n in seen]


def check_catalogue(settings: LLMSettings) -> None:
    """Reads the catalogue the settings name: one that does not parse, or holds an invalid
    entry, is a ``SettingsError`` naming the variable, so start-up stops in one line
    instead of failing in the app."""
    try:
        load_catalogue(settings.catalogue_file)
    except (ValueError, OSError) as exc:  # CatalogueError, undecodable text, unreadable
        raise SettingsError(f"invalid setting MAINSAIL_LLM__CATALOGUE_FILE: {exc}") from None


def load_catalogue(user_file: Path | None = None) -> Catalogue:
    shipped = resources.files("mainsail.llm").joinpath("default_catalogue.toml").read_text()
    raw = tomllib.loads(shipped)
    if user_file is not None:
        raw = _merge(raw, _read_file(user_file))
    providers = {
        name: ProviderSpec(name=name, kind=kind) for name, kind in BUILTIN_PROVIDERS.items()
    }
    for name, spec in (raw.get("providers") or {}).items():
        providers[name] = _provider(name, spec)
    models = {}
    disabled: set[str] = set()
    for name, spec in (raw.get("models") or {}).items():
        if spec.get("enabled", True) is False:
            disabled.add(name)
            continue
        entry = _model(name, spec)
        if entry.provider not in providers:
            raise CatalogueError(f"model {name!r}: unknown provider {entry.provider!r}")
        models[name] = entry
    # A removed model leaves the fallback chains that name it (a shipped one may be named by
    # shipped entries the user never touched); a name never defined is still an error.
    for name, entry in models.items():
        if disabled.intersection(entry.fallbacks):
            kept = tuple(f for f in entry.fallbacks if f not in disabled)
            models[name] = replace(entry, fallbacks=kept)
    for entry in models.values():
        if entry.kind == "embedding" and providers[entry.provider].kind not in EMBEDDING_PROVIDERS:
            raise CatalogueError(
                f"model {entry.name!r}: provider {entry.provider!r} has no embeddings "
                f"(embedding models need a provider of kind {sorted(EMBEDDING_PROVIDERS)})"
            )
        if entry.kind == "embedding" and entry.fallbacks:
            # Vectors of two models live in different spaces: a fallback's would be garbage.
            raise CatalogueError(f"model {entry.name!r}: embedding models cannot have fallbacks")
        for fallback in entry.fallbacks:
            if fallback not in models:
                raise CatalogueError(f"model {entry.name!r}: unknown fallback {fallback!r}")
            if models[fallback].kind != entry.kind:
                raise CatalogueError(
                    f"model {entry.name!r}: fallback {fallback!r} is not a {entry.kind} model"
                )
    return Catalogue(models=models, providers=providers)


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise CatalogueError(f"{path}: {exc}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogueError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogueError(f"{path}: expected a table with 'models' and/or 'providers'")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for section in ("models", "providers"):
        merged[section] = {**(base.get(section) or {}), **(override.get(section) or {})}
    return merged


def _provider(name: str, spec: dict[str, Any]) -> ProviderSpec:
    kind = spec.get("kind")
    if kind not in BUILTIN_PROVIDERS.values():
        raise CatalogueError(f"provider {name!r}: kind must be one of {sorted(BUILTIN_PROVIDERS)}")
    kind = cast(ProviderKind, kind)
    unknown = set(spec) - {"kind", "base_url", "api_key_env", "api_key", "transport"}
    if unknown:
        raise CatalogueError(f"provider {name!r}: unknown fields {sorted(unknown)}")
    transport = spec.get("transport", "direct")
    if transport not in _TRANSPORTS or (kind != "openai" and "transport" in spec):
        raise CatalogueError(
            f"provider {name!r}: transport is for kind openai, one of {list(_TRANSPORTS)}"
        )
    return ProviderSpec(
        name=name,
        kind=kind,
        base_url=spec.get("base_url"),
        api_key_env=spec.get("api_key_env"),
        api_key=spec.get("api_key"),
        transport=cast(OpenAITransport, transport),
    )


_PRICE_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
)
_KNOWN_FIELDS = {
    "provider",
    "model",
    "kind",
    "context_window",
    "max_output_tokens",
    "timeout_s",
    "fallbacks",
    "enabled",
    "dimension",
    *_PRICE_FIELDS,
}


def _model(name: str, spec: dict[str, Any]) -> ModelEntry:
    unknown = set(spec) - _KNOWN_FIELDS
    if unknown:
        raise CatalogueError(f"model {name!r}: unknown fields {sorted(unknown)}")
    try:
        prices = {
            key: Decimal(str(spec[key])) for key in _PRICE_FIELDS if spec.get(key) is not None
        }
        entry = ModelEntry(
            name=name,
            provider=str(spec["provider"]),
            model=str(spec.get("model", name)),
            kind=spec.get("kind", "chat"),
            context_window=int(spec.get("context_window", 8192)),
            max_output_tokens=int(spec.get("max_output_tokens", 4096)),
            timeout_s=float(spec["timeout_s"]) if spec.get("timeout_s") is not None else None,
            fallbacks=tuple(spec.get("fallbacks", ())),
            dimension=int(spec["dimension"]) if spec.get("dimension") is not None else None,
            **prices,
        )
    except (KeyError, ValueError, ArithmeticError) as exc:
        raise CatalogueError(f"model {name!r}: {exc}") from None
    if entry.kind not in ("chat", "embedding"):
        raise CatalogueError(f"model {name!r}: kind must be chat or embedding")
    if any(price < 0 for price in prices.values()):
        raise CatalogueError(f"model {name!r}: prices cannot be negative")
    if entry.dimension is not None and (entry.kind != "embedding" or entry.dimension < 1):
        raise CatalogueError(f"model {name!r}: dimension is a positive number, for embeddings")
    return entry
