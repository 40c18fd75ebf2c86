"""run_pipeline on its own: a real file, the real chunker and local model, a sink that keeps
what it is given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from mainsail.documents.chunking import Chunker, ChunkText
from mainsail.documents.pipeline import run_pipeline
from mainsail.embeddings.local import LocalEmbedder, load_local_embedder
from tests.documents.conftest import essay
from tests.fixtures.app import TEST_MODEL_CACHE


class CountingEmbedder(LocalEmbedder):
    """The local model, counting how it was asked: texts, or the chunker's word pieces."""

    texts_calls = 0
    ids_calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_calls += 1
        return super().embed(texts)

    def embed_token_ids(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        self.ids_calls += 1
        return super().embed_token_ids(pieces)


@pytest.fixture(scope="module")
def model() -> LocalEmbedder:
    return load_local_embedder(TEST_MODEL_CACHE)


def counting(model: LocalEmbedder) -> CountingEmbedder:
    copy = CountingEmbedder.__new__(CountingEmbedder)
    copy.__dict__.update(model.__dict__)
    return copy


def same_vectors(batches: list[list[ChunkText]], vectors: np.ndarray, model: LocalEmbedder) -> bool:
    """Whether each batch's rows are the model's for its texts. Batch by batch: int8 scales its
    activations per run, so a text's vector depends a little on the texts run with it."""
    expected = [model.embed([c.text for c in batch]) for batch in batches]
    return np.array_equal(vectors, np.vstack(expected))


async def ingest(
    path: Path, chunker: Chunker, embedder: LocalEmbedder, *, skip_through: int = -1
) -> tuple[list[list[ChunkText]], np.ndarray]:
    batches: list[list[ChunkText]] = []
    vectors: list[np.ndarray] = []

    async def sink(chunks: list[ChunkText], rows: np.ndarray) -> None:
        batches.append(chunks)
        vectors.append(rows)

    await run_pipeline(
        path,
        "text/plain",
        chunker=chunker,
        embedder=embedder,
        batch_size=32,
        sink=sink,
        skip_through=skip_through,
    )
    return batches, np.vstack(vectors) if vectors else np.empty((0, 384), np.float32)


async def test_batches_grow_to_the_batch_size_and_vectors_are_the_models(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text(essay(120), encoding="utf-8")
    embedder = counting(model)
    chunker = Chunker(embedder.tokenizer, chunk_size=40, chunk_overlap=5)

    batches, vectors = await ingest(path, chunker, embedder)

    sizes = [len(batch) for batch in batches]
    assert sizes[:4] == [4, 8, 16, 32]  # the embedder starts after 4 chunks, not 32
    assert set(sizes[4:-1]) == {32}
    chunks = [chunk for batch in batches for chunk in batch]
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    # The chunker's word pieces were read, not the texts, and they give the texts' vectors.
    assert (embedder.ids_calls, embedder.texts_calls) == (len(batches), 0)
    assert same_vectors(batches, vectors, model)


async def test_a_chunker_counting_with_another_tokenizer_hands_over_texts(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text(essay(20), encoding="utf-8")
    embedder = counting(model)
    # The same vocabulary in another object: the pipeline cannot know it is the model's own.
    other = Tokenizer.from_str(model.tokenizer.to_str())
    batches, vectors = await ingest(path, Chunker(other, chunk_size=40, chunk_overlap=5), embedder)

    assert (embedder.ids_calls, embedder.texts_calls) == (0, len(batches))
    assert same_vectors(batches, vectors, model)


async def test_chunks_through_skip_through_are_not_embedded_again(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text(essay(40), encoding="utf-8")
    chunker = Chunker(model.tokenizer, chunk_size=40, chunk_overlap=5)
    whole, _ = await ingest(path, chunker, model)
    total = sum(map(len, whole))
    rest, vectors = await ingest(path, chunker, model, skip_through=9)
    ordinals = [c.ordinal for batch in rest for c in batch]
    assert ordinals == list(range(10, total))
    assert len(vectors) == total - 10
