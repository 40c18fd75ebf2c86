"""run_pipeline's threads: many ingestions at once never starve one another of threads."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from mainsail.documents import pipeline
from mainsail.documents.chunking import Chunker, ChunkText
from mainsail.documents.pipeline import PipelineStats, run_pipeline
from mainsail.embeddings.local import LocalEmbedder, load_local_embedder
from tests.documents.conftest import essay
from tests.fixtures.app import TEST_MODEL_CACHE


@pytest.fixture(scope="module")
def model() -> LocalEmbedder:
    return load_local_embedder(TEST_MODEL_CACHE)


async def test_many_ingestions_at_once_with_a_model_leaving_cores_spare_all_finish(
    tmp_path: Path, model: LocalEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The local model on one of two cores (DOCUMENTS__EMBED_THREADS=1): the chunker cuts
    # ahead in a thread of its own beside the embed stage, whose calls run in threads too.
    monkeypatch.setattr(pipeline, "default_threads", lambda: 2)
    embedder = LocalEmbedder.__new__(LocalEmbedder)
    embedder.__dict__.update(model.__dict__)
    embedder.threads = 1
    path = tmp_path / "voyage.txt"
    path.write_text("\n\n".join(essay(1 + i % 5, seed=i) for i in range(40)), encoding="utf-8")
    # As many ingestions as the event loop's default executor has threads
    # (JOBS__CONCURRENCY=6 on a 2-core machine).
    at_once = min(32, (os.cpu_count() or 1) + 4)

    async def ingest() -> tuple[list[int], PipelineStats]:
        stored: list[int] = []

        async def sink(chunks: list[ChunkText], vectors: np.ndarray) -> None:
            stored.extend(chunk.ordinal for chunk in chunks)

        stats = await run_pipeline(
            path,
            "text/plain",
            chunker=Chunker(model.tokenizer, chunk_size=24, chunk_overlap=4),
            embedder=embedder,
            batch_size=8,
            sink=sink,
        )
        return stored, stats

    # Each document takes well under a second alone; all of them together hung for ever.
    results = await asyncio.wait_for(asyncio.gather(*(ingest() for _ in range(at_once))), 60)

    for stored, stats in results:
        assert stored == list(range(stats.chunks))
        assert stats.chunks == stats.embedded > 40
