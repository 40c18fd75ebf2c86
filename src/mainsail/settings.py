"""One settings tree for the whole service.

Every value comes from the environment (prefix ``MAINSAIL_``, nested sections joined by
``__``), from a ``.env`` file in the working directory, or from the defaults below.
``.env.example`` lists every key; a test keeps the two in step.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from limits import parse_many
from pydantic import (
    BaseModel,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "MAINSAIL_"
NESTED_DELIMITER = "__"


_MEMORY_SIZE = re.compile(r"(\d+)\s*(kB|MB|GB|TB)")


class DatabaseSettings(BaseModel):
    """Connection pool and embedded-server options (the URL itself is ``database_url``)."""

    embedded_dir: Path | None = None  # the embedded server's data; default <data_dir>/pg
    pool_size: int = Field(default=10, ge=1, le=500)
    max_overflow: int = Field(default=10, ge=0, le=500)
    pool_timeout_s: float = Field(default=10.0, gt=0, le=300)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    statement_timeout_ms: int = Field(default=30_000, ge=0, le=3_600_000)
    ready_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # Test each pooled connection before use: one more round trip per transaction. Off, a
    # connection that died with a database restart fails one request, then the pool renews.
    pool_pre_ping: bool = False
    # The embedded server's memory, written to mainsail.conf in its data directory before
    # each start (ALTER SYSTEM still overrides it). Off: PostgreSQL's defaults. Each value
    # below in PostgreSQL's units (512MB, 4GB); unset: sized from the machine's memory
    # (core.embedded_pg.memory_settings).
    embedded_tune: bool = True
    embedded_shared_buffers: str | None = None
    embedded_effective_cache_size: str | None = None
    embedded_maintenance_work_mem: str | None = None
    embedded_work_mem: str | None = None

    @field_validator(
        "embedded_shared_buffers",
        "embedded_effective_cache_size",
        "embedded_maintenance_work_mem",
        "embedded_work_mem",
    )
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        match = _MEMORY_SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError("expected a size in PostgreSQL's units, e.g. 512MB or 4GB")
        return f"{int(match[1])}{match[2]}"


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    request_id_max_length: int = Field(default=128, ge=8, le=1024)
    cors_origins: list[str] = Field(default_factory=list)
    graceful_shutdown_s: float = Field(default=10.0, ge=0, le=600)


AnonymousArea = Literal["health", "ready", "docs"]


class AuthSettings(BaseModel):
    """Sessions (JWT + refresh tokens), passwords, API keys, login throttling."""

    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    # HS256 key. Unset outside production: one is generated once and kept in data_dir.
    jwt_secret: SecretStr | None = None
    # PEM files for RS256 / ES256.
    jwt_private_key_file: FilePath | None = None
    jwt_public_key_file: FilePath | None = None
    jwt_issuer: str = Field(default="mainsail", min_length=1)
    jwt_audience: str = Field(default="mainsail", min_length=1)
    jwt_leeway_s: int = Field(default=10, ge=0, le=300)
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_s: int = Field(default=14 * 86_400, ge=60)
    session_max_age_s: int = Field(default=30 * 86_400, ge=60)
    password_min_length: int = Field(default=12, ge=8, le=128)
    password_max_length: int = Field(default=256, ge=16, le=4096)
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=65_536, ge=256, le=4_194_304)
    argon2_parallelism: int = Field(default=4, ge=1, le=64)
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_attempts_per_ip: int = Field(default=60, ge=1)
    login_failure_window_s: int = Field(default=900, ge=1)
    api_key_touch_interval_s: int = Field(default=60, ge=0)
    # How long a resolved credential is remembered in memory (0: ask the database every time).
    # Revocations still apply at once: see identity.cache.
    principal_cache_ttl_s: float = Field(default=30, ge=0, le=3600)
    # What may be read without credentials. Unset: health and ready, plus docs in development.
    anonymous_read: list[AnonymousArea] | None = None

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        secret = value.get_secret_value()
        if len(secret.encode()) < 32:
            raise ValueError(
                "expected at least 32 bytes of random text (e.g. openssl rand -hex 32)"
            )
        if secret.lower() in _PLACEHOLDERS or len(set(secret)) < 8:
            raise ValueError("looks like a placeholder; use random text (openssl rand -hex 32)")
        return value

    @model_validator(mode="after")
    def _asymmetric_keys(self) -> AuthSettings:
        if self.jwt_algorithm != "HS256" and not (
            self.jwt_private_key_file and self.jwt_public_key_file
        ):
            raise ValueError(
                f"{self.jwt_algorithm} needs MAINSAIL_AUTH__JWT_PRIVATE_KEY_FILE and "
                "MAINSAIL_AUTH__JWT_PUBLIC_KEY_FILE (PEM files)"
            )
        return self


_PLACEHOLDERS = frozenset(
    {"changeme" * 4, "change-me-change-me-change-me-change-me", "secret" * 6, "x" * 32}
)


class LLMSettings(BaseModel):
    """Providers, the catalogue, and the resilience every model call gets."""

    # TOML or YAML merged over the shipped catalogue (models, prices, fallbacks, providers).
    catalogue_file: FilePath | None = None
    # Read OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, AWS_REGION.
    use_standard_env: bool = True
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    aws_region: str | None = None
    # auto: on when a region and AWS credentials are in the environment or ~/.aws, or on an
    # EC2 instance (its role; AWS_EC2_METADATA_DISABLED=true says not to count on one).
    bedrock: Literal["auto", "on", "off"] = "auto"
    scripted_file: FilePath | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    read_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    stream_timeout_s: float = Field(default=600.0, gt=0, le=7200)
    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_base_delay_s: float = Field(default=0.25, ge=0, le=60)
    retry_max_delay_s: float = Field(default=8.0, ge=0, le=300)
    max_retry_after_s: float = Field(default=20.0, ge=0, le=600)
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_reset_s: float = Field(default=30.0, gt=0, le=3600)
    max_concurrency_per_provider: int = Field(default=64, ge=1, le=10_000)


class AnalysisSettings(BaseModel):
    """``POST /analyze``: structured answers from the shipped task prompts."""

    # Catalogue model used when a request names none (unset: the first configured model that
    # can generate).
    model: str | None = None
    max_input_chars: int = Field(default=100_000, ge=1, le=10_000_000)
    # Repair attempts after an answer that does not validate (each a full model call).
    max_repairs: int = Field(default=2, ge=0, le=10)
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_output_tokens: int = Field(default=2048, ge=16, le=100_000)
    custom_schema_max_bytes: int = Field(default=32_768, ge=256, le=1_048_576)
    custom_schema_max_depth: int = Field(default=16, ge=2, le=64)


class QuotaSettings(BaseModel):
    """Monthly budgets per role (unset: unlimited); admins may override them per user."""

    user_monthly_tokens: int | None = Field(default=None, ge=0)
    user_monthly_cost_usd: Decimal | None = Field(default=Decimal("25"), ge=0)
    admin_monthly_tokens: int | None = Field(default=None, ge=0)
    admin_monthly_cost_usd: Decimal | None = Field(default=None, ge=0)
    # Budget leases: each process reserves room for this many calls like the current one at
    # a time (1: a database round trip per call), writes settled use back every
    # flush_interval_s, and gives back a lease idle for lease_idle_s.
    lease_calls: int = Field(default=16, ge=1, le=10_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    lease_idle_s: float = Field(default=5.0, ge=0, le=3600)


class UsageSettings(BaseModel):
    flush_interval_s: float = Field(default=0.5, gt=0, le=60)
    batch_size: int = Field(default=500, ge=1, le=50_000)
    raw_retention_days: int = Field(default=30, ge=1, le=3650)


class IdempotencySettings(BaseModel):
    """``Idempotency-Key`` on unsafe requests: a retried request gets the first one's answer."""

    # Paths (exact, or a prefix ending in "/*") where POST and PATCH honour the header.
    paths: list[str] = Field(
        default_factory=lambda: ["/v1/chat/completions", "/v1/embeddings", "/analyze", "/chat"]
    )
    # Refuse requests to those paths without the header (400).
    required: bool = False
    # How long a stored answer is replayed, from when it was stored.
    ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    # How long a duplicate waits for the first request to finish before 409.
    wait_s: float = Field(default=5.0, ge=0, le=300)
    # The running request's claim on its key, renewed while it runs; a crashed process's claim
    # lapses after this long.
    lease_s: float = Field(default=30.0, ge=1, le=3600)
    # Answers larger than this are not stored (the key is released instead).
    max_response_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    # Seconds between purges of expired keys.
    purge_interval_s: float = Field(default=300.0, gt=0, le=86_400)

    @field_validator("paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"expected paths starting with '/', got {path!r}")
        return value


class ResponseCacheSettings(BaseModel):
    """Answers to deterministic model calls (temperature 0, no tools), replayed for free.

    Callers skip it per request with ``Cache-Control: no-cache`` (fresh answer, then stored)
    or ``no-store`` (neither read nor stored).
    """

    enabled: bool = True
    # memory:// for one process; redis://host:6379/0 to share answers across replicas.
    storage_url: str = "memory://"
    ttl_s: int = Field(default=3600, ge=1, le=30 * 86_400)
    # Keep answers per caller (true), or share identical requests across all callers (false:
    # cheaper, but a caller could tell from the speed that someone asked the same before).
    per_user: bool = True
    # memory:// bounds (least recently used entries go first).
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    max_bytes: int = Field(default=64 * 1_048_576, ge=1024, le=64 * 1024 * 1_048_576)
    # Larger answers are not kept.
    max_entry_bytes: int = Field(default=262_144, ge=256, le=64 * 1_048_576)
    key_prefix: str = Field(default="mainsail", min_length=1, max_length=64)

    @field_validator("storage_url")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("expected memory:// or redis://host:port/db")
        return value


class JobSettings(BaseModel):
    """Background jobs (ingestion): the jobs table is the truth, an executor runs them."""

    # inprocess: tasks inside each service process claim jobs (the embedded shape).
    # external: the service runs none; `mainsail worker` processes claim them from the database.
    # celery: the service sends them to the broker; `mainsail worker` runs a Celery worker.
    executor: Literal["inprocess", "external", "celery"] = "inprocess"
    # Jobs one process runs at once (embedding already uses every core).
    concurrency: int = Field(default=1, ge=1, le=64)
    # Long jobs (rebuilding an index version) one process runs at once, beside the others.
    long_concurrency: int = Field(default=1, ge=1, le=16)
    # Tries before a job is dead (the dead-letter list at GET /admin/jobs?state=dead).
    max_attempts: int = Field(default=5, ge=1, le=100)
    # A running job's claim, renewed while it runs; a dead worker's job is retaken after it.
    lease_s: float = Field(default=60.0, ge=1, le=3600)
    # Seconds between looks for work when no notification arrives.
    poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    # Retry delay: base * 2^(attempt-1), capped, with jitter.
    backoff_base_s: float = Field(default=5.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=600.0, ge=0, le=86_400)
    # Celery only: the broker (Redis or RabbitMQ) and how long an unacknowledged task waits
    # before the broker hands it to another worker (longer than the longest job).
    celery_broker_url: str = "redis://127.0.0.1:6379/1"
    celery_visibility_timeout_s: int = Field(default=7200, ge=60, le=7 * 86_400)


class DocumentSettings(BaseModel):
    """Uploads, parsing, chunking and the local embedder."""

    # Where originals are kept: "local" (storage_dir) or "s3" (an S3-compatible object store;
    # credentials come from the standard AWS chain: environment, profile, instance role).
    storage: Literal["local", "s3"] = "local"
    # The originals' directory (default: <data_dir>/documents); with "s3", where uploads are
    # staged and the ingestion job's temporary copies are written.
    storage_dir: Path | None = None
    # S3 only: the bucket, and the prefix of every key (<prefix><document id>/<revision>).
    s3_bucket: str | None = Field(default=None, min_length=3, max_length=255)
    s3_prefix: str = Field(default="documents/", max_length=512)
    # S3 only: None means AWS; set it for MinIO, Ceph, R2 and other S3-compatible stores.
    s3_endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    s3_region: str | None = None
    # S3 only: seconds to connect and to wait for each answer, and attempts per call (standard
    # retry mode: transient errors and throttling, with backoff).
    s3_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    s3_read_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    s3_max_attempts: int = Field(default=3, ge=1, le=20)
    # S3 only: "path" (http://host/bucket/key, what most self-hosted stores need), "virtual"
    # (http://bucket.host/key) or "auto" (boto3 chooses).
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Largest upload in bytes; larger ones are refused (413) before the rest is read.
    max_upload_bytes: int = Field(default=100 * 1_048_576, ge=1024, le=64 * 1024 * 1_048_576)
    # Default chunking, in tokens of the embedding model's tokenizer (an upload may override).
    chunk_size: int = Field(default=200, ge=16, le=8192)
    chunk_overlap: int = Field(default=30, ge=0, le=4096)
    default_collection: str = Field(default="default", min_length=1, max_length=128)
    # Passages per model run, and embedding threads (default: every core).
    embed_batch_size: int = Field(default=32, ge=1, le=1024)
    # Chunks per embedder call: the longest of a pool of four calls' worth, sorted by length
    # into batches, so a larger window pads less (memory grows with it).
    embed_window: int = Field(default=256, ge=1, le=8192)
    embed_threads: int | None = Field(default=None, ge=1, le=256)
    # Threads of the local model's search-query session (a session of its own, beside the
    # documents'): one short text per call, and the database needs the other cores.
    query_embed_threads: int = Field(default=1, ge=1, le=256)
    # The embedding model of the first index version: "local" (all-MiniLM-L6-v2 in process, no
    # network), or the name of a catalogue model of kind embedding (text-embedding-3-small,
    # bedrock-titan-embed-v2, ...), called through the gateway and billed to each owner.
    embedder: str = Field(default="local", min_length=1, max_length=128)
    # The local model with int8 weights (about twice as fast as fp32, same retrieval quality).
    embed_quantized: bool = True
    # Where the local model's ONNX graphs are built and kept (default: <data_dir>/models).
    model_cache_dir: Path | None = None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> DocumentSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> DocumentSettings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("storage 's3' needs a bucket (MAINSAIL_DOCUMENTS__S3_BUCKET)")
        return self


class SearchSettings(BaseModel):
    """``POST /search``: vector (pgvector HNSW), keyword (full text, BM25) and their fusion."""

    # HNSW candidate list per vector query; raised to at least the candidate pool. 200: recall@10
    # about 0.97 on a million clustered 384-d vectors (100: 0.93).
    ef_search: int = Field(default=200, ge=1, le=1000)
    # How hybrid search fuses the keyword and vector rankings. "score": each retriever's scores
    # scaled to [0, 1] over its candidates, mixed keyword_weight : 1 - keyword_weight (nDCG@10
    # above both single modes on every shared set, and above RRF: bench/fusion_quality.py).
    # "rrf": Reciprocal Rank Fusion, sum over retrievers of 1 / (rrf_k + rank).
    fusion: Literal["score", "rrf"] = "score"
    keyword_weight: float = Field(default=0.5, ge=0, le=1)
    rrf_k: int = Field(default=60, ge=1, le=10_000)
    # Passages each retriever ranks; pages are cut from this pool, so they never overlap.
    candidates: int = Field(default=100, ge=1, le=1000)
    # The largest top_k one page may ask for.
    max_top_k: int = Field(default=100, ge=1, le=1000)
    max_query_chars: int = Field(default=2000, ge=1, le=100_000)
    # Filters that leave at most this many chunks are searched exactly (no index, no recall
    # loss); larger sets use the HNSW index. A version's HNSW index is built once the version
    # holds more chunks than this (before, no search could use it and every insert would pay
    # for it); 0 builds it with the version.
    exact_below: int = Field(default=20_000, ge=0, le=10_000_000)
    # When filters drop too many of the index's candidates: ask again with a list this many
    # times longer (up to 1000), then rank the scope exactly.
    hnsw_overfetch: int = Field(default=4, ge=1, le=100)
    # BM25 parameters of the keyword retriever.
    bm25_k1: float = Field(default=1.2, ge=0, le=10)
    bm25_b: float = Field(default=0.75, ge=0, le=1)
    # In scopes of at least common_term_scope chunks, a query word in more than
    # common_term_fraction of all chunks (PostgreSQL's own statistics of the full-text column)
    # no longer finds passages by itself: it still scores in the passages the query's other
    # words find, with its document frequency estimated from those statistics. Scoring every
    # passage with a common word ("system" in a fifth of a million chunks) would take seconds.
    common_term_scope: int = Field(default=200_000, ge=1)
    common_term_fraction: float = Field(default=0.02, gt=0, le=1)
    # Results cached per (index version, owner, query, filters, mode, page); a new index
    # version changes the key, so activation needs no purge. Empty: no cache.
    cache_url: str = "memory://"
    cache_ttl_s: int = Field(default=300, ge=1, le=86_400)
    cache_max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    # The quality gate of index versions: a JSON file of queries and their relevant documents
    # (docs/architecture.md, "Index versions"). Each new version is measured on it (nDCG@10,
    # Recall@k), and activation is refused when it is worse than the active version by more
    # than eval_margin on either figure, unless forced. Unset: no gate.
    eval_set: Path | None = None
    eval_margin: float = Field(default=0.01, ge=0, le=1)

    @field_validator("cache_url")
    @classmethod
    def _known_cache(cls, value: str) -> str:
        if value and not value.startswith(("memory://", "redis://", "rediss://", "unix://")):
            raise ValueError("expected memory://, redis://host:port/db, or empty (no cache)")
        return value


class ChatSettings(BaseModel):
    """``POST /chat``: retrieve, pack the passages into the model's budget, answer, cite."""

    # Catalogue model used when a request names none (unset: the first configured model that
    # can generate, else the extractive model, which quotes the passages).
    model: str | None = None
    # Passages retrieved per question (hybrid search); as many as fit the budget are sent.
    retrieve_k: int = Field(default=8, ge=1, le=100)
    # Tokens kept for the answer (the request's max_tokens).
    answer_tokens: int = Field(default=1024, ge=16, le=100_000)
    # Cap on the prompt (system, history, passages, question) in tokens; the model's context
    # window less answer_tokens applies anyway. Unset: that window alone.
    max_prompt_tokens: int | None = Field(default=None, ge=256, le=2_000_000)
    # Earlier messages sent with a follow-up, newest first, within this many tokens.
    history_tokens: int = Field(default=1500, ge=0, le=100_000)
    history_messages: int = Field(default=10, ge=0, le=200)
    # Rewrite a follow-up into a standalone question (a model call) before searching.
    condense: bool = True
    temperature: float = Field(default=0.0, ge=0, le=2)


RateLimitStrategy = Literal["moving-window", "sliding-window-counter"]


class RateLimitSettings(BaseModel):
    """Request limits for the whole API (and the storage the sign-in throttle shares)."""

    # memory:// for one process; redis://host:6379/0 to share limits across replicas.
    storage_url: str = "memory://"
    enabled: bool = True
    # moving-window: exact (one stored timestamp per request in the window);
    # sliding-window-counter: two counters per key, approximate at window edges, cheaper.
    strategy: RateLimitStrategy = "moving-window"
    # Per API key or signed-in user, by the account's role; per client address for anonymous
    # callers and failed authentication. `limits` notation, several joined by ";"
    # ("600/minute;20000/hour"); "" means unlimited.
    user: str = "600/minute"
    admin: str = "1200/minute"
    anonymous: str = "120/minute"
    # Never limited (exact paths, or a prefix ending in "*"): probes poll these.
    exempt_paths: list[str] = Field(default_factory=lambda: ["/health", "/ready"])
    # 0: the client is the connection's peer and X-Forwarded-For is ignored. N: N trusted
    # proxies each append to X-Forwarded-For, so the client is the Nth address from the right.
    forwarded_for_hops: int = Field(default=0, ge=0, le=16)
    # Namespace of the counters, so deployments can share one Redis.
    key_prefix: str = Field(default="mainsail", min_length=1, max_length=64)

    @field_validator("user", "admin", "anonymous")
    @classmethod
    def _limit_notation(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    'expected limits such as "600/minute" or "60/minute;1000/hour"'
                ) from None
        return value

    @field_validator("exempt_paths")
    @classmethod
    def _absolute_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"expected paths starting with '/', got {path!r}")
        return value


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".mainsail")
    database_url: SecretStr | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    idempotency: IdempotencySettings = Field(default_factory=IdempotencySettings)
    response_cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)

    @model_validator(mode="after")
    def _production_guard(self) -> Settings:
        if self.environment != "production":
            return self
        if self.auth.jwt_algorithm == "HS256" and self.auth.jwt_secret is None:
            raise ValueError(
                "MAINSAIL_AUTH__JWT_SECRET is required in production "
                "(at least 32 random bytes, e.g. openssl rand -hex 32)"
            )
        return self

    @property
    def anonymous_read(self) -> frozenset[str]:
        if self.auth.anonymous_read is not None:
            return frozenset(self.auth.anonymous_read)
        areas = {"health", "ready"}
        if self.environment == "development":
            areas.add("docs")
        return frozenset(areas)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            url = make_url(value.get_secret_value().strip())
        except (ArgumentError, ValueError):  # ValueError: a port that is no number, which
            # is how an unescaped "@" or ":" in the password reads; its message shows it.
            raise ValueError(
                "expected a PostgreSQL URL such as postgresql://user:password@host:5432/dbname"
            ) from None
        if url.get_backend_name() != "postgresql":
            raise ValueError(
                "expected a PostgreSQL URL (postgresql://...); "
                f"the scheme {url.drivername!r} is not supported"
            )
        return SecretStr(url.set(drivername="postgresql+asyncpg").render_as_string(False))

    def embedded_dir(self) -> Path:
        """Where the embedded server keeps its data: ``database.embedded_dir``, by default
        ``<data_dir>/pg``."""
        return self.database.embedded_dir or self.data_dir / "pg"

    def async_database_url(self) -> URL | None:
        """The external database URL with the asyncpg driver, or None for the embedded server."""
        if self.database_url is None:
            return None
        return make_url(self.database_url.get_secret_value())


class SettingsError(Exception):
    """Raised when the environment does not describe a valid configuration.

    ``str()`` is a short, human-readable list: one line per offending variable, naming
    it and the expected form, never echoing a secret's value.
    """


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    except SourceError as exc:  # a list or table setting whose value is not JSON
        raise SettingsError(_describe_source_error(exc)) from None


def _describe_source_error(exc: SourceError) -> str:
    """Names the list or table variables of the failing section whose value is not JSON."""
    lines = []
    match = re.search(r'field "(\w+)"', str(exc))
    section = Settings.model_fields.get(match.group(1)) if match else None
    if match and section is not None and isinstance(section.annotation, type):
        fields = getattr(section.annotation, "model_fields", {})
        prefix = ENV_PREFIX + match.group(1).upper() + NESTED_DELIMITER
        for name, value in sorted(os.environ.items()):
            field = fields.get(name[len(prefix) :].lower()) if name.startswith(prefix) else None
            if field is None or get_origin(field.annotation) not in (list, tuple, set, dict):
                continue
            try:
                json.loads(value)
            except ValueError:
                lines.append(
                    f"invalid setting {name}: expected JSON, such as"
                    f' ["http://localhost:5173"] for a list (got {value[:80]!r})'
                )
    return "\n".join(lines) or f"invalid settings: {exc}"


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        message = error["msg"].removeprefix("Value error, ")
        if not loc:  # a rule across several settings names its variables itself
            lines.append(f"invalid settings: {message}")
            continue
        variable = ENV_PREFIX + NESTED_DELIMITER.join(loc).upper()
        shown = ""
        if not _is_secret(loc) and isinstance(error.get("input"), str | int | float):
            shown = f" (got {str(error['input'])[:80]!r})"
        lines.append(f"invalid setting {variable}: {message}{shown}")
    return "\n".join(lines)


def _is_secret(loc: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in get_args(annotation):
            return True
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        return False
    return False
