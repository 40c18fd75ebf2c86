"""The searcher one process shares: its query embedder and result cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mainsail.core.cache import ByteCache, open_cache
from mainsail.core.db import Database
from mainsail.documents.embedders import Embedders
from mainsail.llm.gateway import CallContext
from mainsail.search.service import Searcher
from mainsail.settings import SearchSettings


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
