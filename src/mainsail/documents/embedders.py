"""Embedders by name: the local model, loaded once per process on first use (it loads in about
a second; the first load on a machine also builds its ONNX graph), or a catalogue model of
kind ``embedding`` (OpenAI ``text-embedding-3-*``, Bedrock Titan, an OpenAI-compatible
server's) called through the model gateway.

Names: ``all-MiniLM-L6-v2@int8`` / ``@fp32`` for the local model, the catalogue name for a
provider model. An index version records the name its chunks were embedded with; query
vectors must come from the same one (``Embedders.embed``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from mainsail.embeddings.base import Embedder
from mainsail.llm.errors import UpstreamBadResponse
from mainsail.llm.gateway import CallContext, Gateway
from mainsail.llm.tokens import count_tokens
from mainsail.llm.types import EmbeddingRequest

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSION = 384
LOCAL_MAX_TOKENS = 256
# Who a provider call is billed to when the caller names no one: the service itself
# (metered, never budgeted).
SERVICE_CONTEXT = CallContext(kind="embeddings")


def local_name(*, quantized: bool) -> str:
    return f"{LOCAL_MODEL}@{'int8' if quantized else 'fp32'}"


def is_local(name: str) -> bool:
    return name.partition("@")[0] == LOCAL_MODEL


@runtime_checkable
class AsyncEmbedder(Protocol):
    """An embedder the pipeline awaits instead of running in a thread."""

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dimension), each row L2-normalized, in the order given."""
        ...


class EmbeddingMismatch(UpstreamBadResponse):
    """The model's vectors are not the length its catalogue entry (and index) says, or are
    no direction at all (zero, NaN or infinite values): a bad answer of the model's (502)."""


# pgvector's HNSW index takes vectors of at most this many dimensions.
MAX_INDEXED_DIMENSIONS = 2000


@dataclass(frozen=True, slots=True, eq=False)
class ProviderEmbedder:
    """A catalogue model of kind ``embedding``, called through the gateway: each call is
    reserved against the bound caller's budget and settled, bounded, retried and metered
    like any model call. Vectors are L2-normalized here, like the local model's.

    Text is counted in cl100k (``llm.tokens``, bundled, offline): the encoding of OpenAI's
    embedding models, and for Titan and others the same estimate the gateway's budgets use.
    ``tokenizer`` is None, which tells the chunker to count that way.
    """

    gateway: Gateway
    name: str  # the catalogue name, recorded on the index version
    dimension: int
    max_tokens: int  # the model's context window: the most one chunk may hold
    ctx: CallContext | None = None

    @property
    def tokenizer(self) -> None:
        return None

    def bind(self, ctx: CallContext | None) -> ProviderEmbedder:
        """The same model, its calls billed to ``ctx``'s caller (None: the service)."""
        return replace(self, ctx=ctx)

    def count_tokens(self, text: str) -> int:
        return count_tokens(text)

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        request = EmbeddingRequest(model=self.name, inputs=tuple(texts))
        response = await self.gateway.embed(request, self.ctx or SERVICE_CONTEXT)
        vectors = np.asarray(response.vectors, dtype=np.float32)
        if vectors.shape != (len(texts), self.dimension):
            raise EmbeddingMismatch(
                f"{self.name} returned vectors of shape {vectors.shape}; its catalogue entry "
                f"says {self.dimension} dimensions.",
                model=self.name,
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not (np.isfinite(norms).all() and (norms > 0).all()):
            # A zero vector has no cosine distance (searches would score it null); NaN and
            # infinite values are refused by the index.
            raise EmbeddingMismatch(
                f"{self.name} returned a vector that is zero or not finite.", model=self.name
            )
        normalized: np.ndarray = vectors / norms
        return normalized


DocumentEmbedder = Embedder | ProviderEmbedder


def chunk_limit(embedder: DocumentEmbedder) -> int:
    """The most tokens one chunk may hold for ``embedder``: a provider's whole window, a local
    model's window less the two special tokens it frames every text with."""
    if isinstance(embedder, ProviderEmbedder):
        return embedder.max_tokens
    return embedder.max_tokens - 2


class Embedders:
    """The embedders of one process. Catalogue models need ``gateway``."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        threads: int | None,
        batch_size: int,
        gateway: Gateway | None = None,
        query_threads: int = 1,
    ) -> None:
        self.cache_dir = cache_dir
        self.threads = threads
        self.batch_size = batch_size
        self.gateway = gateway
        self.query_threads = query_threads
        self._loaded: dict[str, Embedder] = {}
        self._queries: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Embedder:
        """The local embedder ``name``, loaded on first use (blocking: call it in a thread)."""
        return self._session(self._loaded, name, self.threads)

    def for_queries(self, name: str) -> Embedder:
        """The local model ``name`` in a session of its own with ``query_threads`` threads,
        for search queries. One short text per call: a second thread costs more in handing
        work over than it saves (1.7 against 2.2 ms here), and it would take the core the
        database needs for the same search; nor does a query queue behind an ingestion
        batch in the documents' session."""
        return self._session(self._queries, name, self.query_threads)

    def _session(self, sessions: dict[str, Embedder], name: str, threads: int | None) -> Embedder:
        with self._lock:
            embedder = sessions.get(name)
            if embedder is None:
                embedder = self._load(name, threads, self.batch_size)
                sessions[name] = embedder
            return embedder

    def provider(self, name: str) -> ProviderEmbedder:
        """The catalogue model ``name`` behind the gateway, billed to no one until bound.
        Raises the gateway's errors for an unknown, unconfigured or non-embedding model."""
        if self.gateway is None:
            raise LookupError(
                f"embedder {name!r} is a catalogue model, and this process has no model gateway"
            )
        entry = self.gateway.resolve(name, kind="embedding")
        if entry.dimension is None:
            raise LookupError(
                f"the catalogue entry {name!r} has no dimension; add `dimension = N` (the "
                "length of its vectors) to it"
            )
        if entry.dimension > MAX_INDEXED_DIMENSIONS:
            raise LookupError(
                f"{name!r} makes vectors of {entry.dimension} dimensions; the vector index "
                f"takes at most {MAX_INDEXED_DIMENSIONS}"
            )
        return ProviderEmbedder(
            self.gateway, entry.name, dimension=entry.dimension, max_tokens=entry.context_window
        )

    def load(self, name: str) -> DocumentEmbedder:
        """Either kind by name (blocking for a local model's first load: call it in a thread)."""
        return self(name) if is_local(name) else self.provider(name)

    async def embed(
        self, name: str, texts: Sequence[str], *, ctx: CallContext | None
    ) -> np.ndarray:
        """float32 (len(texts), dimension), L2-normalized rows, from the embedder ``name``
        (an index version's ``embedder``): the one entry point for query vectors.

        Local: run in a worker thread (the first call loads the model), ``ctx`` unused.
        Provider: through the gateway, reserved against and metered to ``ctx``'s caller
        (None: the service's own call, metered but not budgeted). Model errors are the
        gateway's ``LLMError``s (and ``QuotaExceeded``), as on every other model route.
        """
        if is_local(name):
            return await asyncio.to_thread(lambda: self.for_queries(name).embed(list(texts)))
        return await self.provider(name).bind(ctx).embed_async(texts)

    def _load(self, name: str, threads: int | None, batch_size: int) -> Embedder:
        model, _, precision = name.partition("@")
        if model != LOCAL_MODEL:
            raise LookupError(
                f"embedder {name!r} is not the local model: a catalogue model's vectors come "
                "from Embedders.embed (or .provider), through the gateway"
            )
        if precision not in ("int8", "fp32"):
            raise LookupError(f"unknown embedder {name!r}")
        from mainsail.embeddings.local import load_local_embedder

        return load_local_embedder(
            self.cache_dir,
            quantized=precision == "int8",
            threads=threads,
            batch_size=batch_size,
        )
