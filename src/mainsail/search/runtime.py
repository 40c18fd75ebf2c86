"""The searcher one process shares (its query embedder and result cache), the index
versions service, and the job handlers a process registers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mainsail.core.cache import ByteCache, open_cache
from mainsail.core.db import Database
from mainsail.documents.embedders import Embedders
from mainsail.documents.pipeline import INGEST, VECTOR_INDEX
from mainsail.documents.runtime import DocumentsKit
from mainsail.jobs.service import JobRunner
from mainsail.llm.gateway import CallContext
from mainsail.search.indexing import PURGE, REINDEX, IndexVersions
from mainsail.search.service import Searcher
from mainsail.settings import SearchSettings, Settings


def search_cache(settings: SearchSettings) -> ByteCache | None:
    if not settings.cache_url:
        return None
    return open_cache(
        settings.cache_url, prefix="mainsail:search:", max_entries=settings.cache_max_entries
    )


def start_search(
    settings: SearchSettings, db: Database, embedders: Embedders, cache: ByteCache | None
) -> Searcher:
    async def embed(name: str, texts: Sequence[str], ctx: CallContext | None) -> np.ndarray:
        return await embedders.embed(name, texts, ctx=ctx)

    return Searcher(db, settings, embed, cache)


def start_index_versions(
    settings: Settings, db: Database, documents: DocumentsKit, searcher: Searcher
) -> IndexVersions:
    return IndexVersions(db, settings, documents.embedders, documents.ingestor, searcher)


def register_jobs(runner: JobRunner, documents: DocumentsKit, versions: IndexVersions) -> None:
    """Every job handler, in the service's runner and in ``mainsail worker``'s alike. Index
    builds run in lanes of their own, so uploads are ingested while one runs."""
    runner.register(INGEST, documents.ingestor, gave_up=documents.ingestor.gave_up)
    runner.register(REINDEX, versions.build, long=True, gave_up=versions.build_gave_up)
    runner.register(PURGE, versions.purge, long=True)
    runner.register(VECTOR_INDEX, versions.build_vector_index, long=True)
