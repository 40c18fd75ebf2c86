"""What the document routes and the ingestion job share in one process."""

from __future__ import annotations

from dataclasses import dataclass

from mainsail.core.db import Database
from mainsail.documents.embedders import (
    LOCAL_DIMENSION,
    LOCAL_MAX_TOKENS,
    Embedders,
    local_name,
)
from mainsail.documents.pipeline import FirstVersion, Ingestor
from mainsail.documents.storage import LocalStore
from mainsail.settings import Settings


@dataclass
class DocumentsKit:
    store: LocalStore
    embedders: Embedders
    ingestor: Ingestor
    max_tokens: int  # the most a chunk may hold: the model's limit less [CLS] and [SEP]


async def start_documents(settings: Settings, db: Database) -> DocumentsKit:
    config = settings.documents
    store = LocalStore(config.storage_dir or settings.data_dir / "documents")
    embedders = Embedders(
        config.model_cache_dir or settings.data_dir / "models",
        threads=config.embed_threads,
        batch_size=config.embed_batch_size,
    )
    # The first index version, made by the first job that needs one (the service starts
    # even when the database is not there yet).
    first = FirstVersion(
        embedder=local_name(quantized=config.embed_quantized),
        dimension=LOCAL_DIMENSION,
        chunk_size=config.chunk_size,
        chunk_overlap=config.chunk_overlap,
    )
    ingestor = Ingestor(db, store, embedders, first, batch_size=config.embed_window)
    return DocumentsKit(store, embedders, ingestor, max_tokens=LOCAL_MAX_TOKENS - 2)
