"""What the document routes and the ingestion job share in one process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.documents.chunking import fit_to_model
from mainsail.documents.embedders import (
    LOCAL_DIMENSION,
    LOCAL_MAX_TOKENS,
    Embedders,
    local_name,
)
from mainsail.documents.pipeline import FirstVersion, Ingestor
from mainsail.documents.storage import DocumentStore, open_store
from mainsail.llm.gateway import Gateway
from mainsail.settings import Settings

log = get_logger(__name__)


@dataclass
class DocumentsKit:
    store: DocumentStore
    embedders: Embedders
    ingestor: Ingestor
    # The most a chunk may hold: the local model's limit less [CLS] and [SEP], or a provider
    # model's context window.
    max_tokens: int


async def start_documents(
    settings: Settings, db: Database, gateway: Gateway | None = None
) -> DocumentsKit:
    """``gateway`` serves a provider embedder (``documents.embedder`` naming a catalogue
    model); without one only the local model works. A provider embedder that cannot work
    (unknown, not an embedding model, provider not configured, no dimension) stops start-up
    with the reason."""
    config = settings.documents
    store = await asyncio.to_thread(open_store, config, settings.data_dir)
    embedders = Embedders(
        config.model_cache_dir or settings.data_dir / "models",
        threads=config.embed_threads,
        batch_size=config.embed_batch_size,
        gateway=gateway,
        query_threads=config.query_embed_threads,
    )
    name, dimension, max_tokens = (
        local_name(quantized=config.embed_quantized),
        LOCAL_DIMENSION,
        LOCAL_MAX_TOKENS - 2,
    )
    if config.embedder != "local":
        provider = embedders.provider(config.embedder)
        name, dimension, max_tokens = provider.name, provider.dimension, provider.max_tokens
    if config.chunk_size > max_tokens:  # longer chunks would be embedded truncated
        log.warning("chunk_size_capped", chunk_size=config.chunk_size, model=name, reads=max_tokens)
    chunk_size, chunk_overlap = fit_to_model(
        config.chunk_size, config.chunk_overlap, limit=max_tokens
    )
    # The first index version, made by the first job that needs one (the service starts
    # even when the database is not there yet).
    first = FirstVersion(
        embedder=name, dimension=dimension, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    ingestor = Ingestor(
        db,
        store,
        embedders.load,
        first,
        batch_size=config.embed_window,
        jobs=settings.jobs,
        vector_index_above=settings.search.exact_below,
    )
    return DocumentsKit(store, embedders, ingestor, max_tokens=max_tokens)
