"""run_pipeline on its own: a real file, the real chunker and local model, a sink that keeps
what it is given."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from mainsail.documents import pipeline
from mainsail.documents.chunking import Chunker, ChunkText
from mainsail.documents.parsing import Block
from mainsail.documents.pipeline import EmbedPool, run_pipeline
from mainsail.embeddings.local import LocalEmbedder, load_local_embedder, model_dir
from tests.documents.conftest import essay
from tests.fixtures.app import TEST_MODEL_CACHE


class CountingEmbedder(LocalEmbedder):
    """The local model, recording what it was given (texts, or the chunker's word pieces) and
    the vector it returned for each input object."""

    texts_calls = 0
    calls: list[list[np.ndarray]]  # the word pieces of each call
    rows: dict[int, np.ndarray]  # id(input) -> its vector
    called_in: set[int]  # the threads the calls ran in
    fail_on_call: int | None = None  # raise on this call (1 = the first)
    busy = False  # a call is under way
    on_call: Callable[[], object] | None = None  # run at the start of each call

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_calls += 1
        return self._record(texts, super().embed(texts))

    def embed_token_ids(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append(list(pieces))
        self.called_in.add(threading.get_ident())
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("the model failed")
        self.busy = True
        try:
            if self.on_call is not None:
                self.on_call()
            return self._record(pieces, super().embed_token_ids(pieces))
        finally:
            self.busy = False

    def _record(self, inputs: Sequence[object], vectors: np.ndarray) -> np.ndarray:
        self.rows.update((id(item), row) for item, row in zip(inputs, vectors, strict=True))
        return vectors


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def model() -> LocalEmbedder:
    return load_local_embedder(TEST_MODEL_CACHE)


def counting(model: LocalEmbedder) -> CountingEmbedder:
    copy = CountingEmbedder.__new__(CountingEmbedder)
    copy.__dict__.update(model.__dict__)
    copy.calls, copy.rows, copy.called_in = [], {}, set()
    return copy


class WatchedChunker(Chunker):
    """The chunker, noting how many chunks it cut, in which threads, and how many while
    ``model`` was in a call; ``ahead`` is set once it has cut ``ahead_at`` chunks."""

    model: CountingEmbedder | None = None
    cut = 0
    cut_while_busy = 0
    ahead_at = 12  # within what the queue to the model holds (8 groups of 2 at batch 16)

    def chunks(self, blocks: Iterable[Block]) -> Iterator[ChunkText]:
        self.cut_in: set[int] = set()
        self.ahead = threading.Event()
        for chunk in super().chunks(blocks):
            self.cut_in.add(threading.get_ident())
            self.cut += 1
            self.cut_while_busy += bool(self.model and self.model.busy)
            if self.cut >= self.ahead_at:
                self.ahead.set()
            yield chunk


def padded(calls: list[list[int]], batch: int) -> int:
    """Token positions the model computes for these calls (each sorted, cut in batches)."""
    total = 0
    for lengths in calls:
        ordered = sorted(lengths, reverse=True)
        total += sum(
            ordered[i] * len(ordered[i : i + batch]) for i in range(0, len(ordered), batch)
        )
    return total


def stored_as_returned(
    chunks: list[ChunkText], vectors: np.ndarray, embedder: CountingEmbedder, *, by_ids: bool
) -> bool:
    """Whether each chunk was stored with the vector the embedder returned for it."""
    keys = [id(c.token_ids if by_ids else c.text) for c in chunks]
    return np.array_equal(vectors, np.stack([embedder.rows[key] for key in keys]))


async def ingest(
    path: Path,
    chunker: Chunker,
    embedder: LocalEmbedder | OrderedProvider,
    *,
    skip_through: int = -1,
    batch_size: int = 32,
    fail_on_store: int | None = None,
) -> tuple[list[list[ChunkText]], np.ndarray]:
    batches: list[list[ChunkText]] = []
    vectors: list[np.ndarray] = []

    async def sink(chunks: list[ChunkText], rows: np.ndarray) -> None:
        if len(batches) + 1 == fail_on_store:
            raise RuntimeError("the store failed")
        batches.append(chunks)
        vectors.append(rows)

    await run_pipeline(
        path,
        "text/plain",
        chunker=chunker,
        embedder=embedder,
        batch_size=batch_size,
        sink=sink,
        skip_through=skip_through,
    )
    return batches, np.vstack(vectors) if vectors else np.empty((0, 384), np.float32)


async def test_the_longest_chunks_are_embedded_together_and_stored_in_order(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    # Paragraphs of many lengths, so chunks of many lengths.
    path.write_text("\n\n".join(essay(1 + i % 5, seed=i) for i in range(150)), encoding="utf-8")
    embedder = counting(model)
    chunker = Chunker(embedder.tokenizer, chunk_size=24, chunk_overlap=4)

    batches, vectors = await ingest(path, chunker, embedder, batch_size=128)

    chunks = [chunk for batch in batches for chunk in batch]
    assert len(chunks) > 4 * 128  # more than the pool holds
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))  # stored in order
    # The chunker's word pieces were read, not the texts, at most a call's worth at a time.
    assert embedder.texts_calls == 0
    assert sum(map(len, embedder.calls)) == len(chunks)
    assert max(map(len, embedder.calls)) == 128
    # The first call did not wait for a whole call's worth to be cut.
    assert len(embedder.calls[0]) < 128
    # Each chunk is stored with its vector; each call's vectors are the model's for its texts.
    assert stored_as_returned(chunks, vectors, embedder, by_ids=True)
    text_of = {id(c.token_ids): c.text for c in chunks}
    for pieces in embedder.calls[:3]:
        returned = np.stack([embedder.rows[id(p)] for p in pieces])
        assert np.array_equal(returned, model.embed([text_of[id(p)] for p in pieces]))


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine as the pipeline sees it: four cores."""
    monkeypatch.setattr(pipeline, "default_threads", lambda: 4)


@pytest.mark.usefixtures("four_cores")
@pytest.mark.parametrize("threads", [4, 2])
async def test_the_chunker_runs_beside_the_model_only_where_the_model_leaves_cores_free(
    tmp_path: Path, model: LocalEmbedder, threads: int
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text("\n\n".join(essay(1 + i % 5, seed=i) for i in range(60)), encoding="utf-8")
    embedder = counting(model)
    embedder.threads = threads
    chunker = WatchedChunker(model.tokenizer, chunk_size=24, chunk_overlap=4)
    chunker.model = embedder
    waits: list[bool] = []
    if threads < 4:  # each call waits (up to 10 s) for the chunker to be 12 chunks in
        embedder.on_call = lambda: waits.append(chunker.ahead.wait(10))

    batches, vectors = await ingest(path, chunker, embedder, batch_size=16)

    chunks = [chunk for batch in batches for chunk in batch]
    assert len(chunks) == chunker.cut > 4 * 16
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert stored_as_returned(chunks, vectors, embedder, by_ids=True)
    assert len(embedder.calls[0]) < 16  # the first call starts on the first chunks cut
    if threads == 4:  # every core: the two take turns, in one thread
        assert chunker.cut_while_busy == 0
        assert len(chunker.cut_in) == 1
        assert chunker.cut_in == embedder.called_in
    else:  # cores to spare: the chunker cut ahead while the model's first call ran
        assert waits[0] is True
        assert chunker.cut_while_busy >= chunker.ahead_at - len(embedder.calls[0])


@pytest.mark.usefixtures("four_cores")
@pytest.mark.parametrize("threads", [4, 2])
@pytest.mark.parametrize("failing", ["model", "store"])
async def test_a_failing_stage_stops_the_others_and_its_error_is_raised(
    tmp_path: Path, model: LocalEmbedder, threads: int, failing: str
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text("\n\n".join(essay(1 + i % 5, seed=i) for i in range(300)), encoding="utf-8")
    whole = len(
        list(
            Chunker(model.tokenizer, chunk_size=24, chunk_overlap=4).chunks(
                iter([Block(text=path.read_text(encoding="utf-8"), kind="paragraph")])
            )
        )
    )
    embedder = counting(model)
    embedder.threads = threads
    embedder.fail_on_call = 3 if failing == "model" else None
    chunker = WatchedChunker(model.tokenizer, chunk_size=24, chunk_overlap=4)

    with pytest.raises(RuntimeError, match=f"the {failing} failed"):
        await asyncio.wait_for(
            ingest(
                path,
                chunker,
                embedder,
                batch_size=8,
                fail_on_store=2 if failing == "store" else None,
            ),
            timeout=60,
        )

    # Neither the chunker nor the model went on to the end of the document.
    assert whole > 1000
    assert chunker.cut < whole / 4
    assert sum(map(len, embedder.calls)) < whole / 4


def test_calls_from_the_pool_pad_less_than_calls_in_document_order(tokenizer: Tokenizer) -> None:
    # The embed stage's calls when embedding is the slow part (as with real chunk sizes).
    text = "\n\n".join(essay(1 + i % 5, seed=i) for i in range(150))
    blocks = [Block(text=part, kind="paragraph") for part in text.split("\n\n")]
    chunks = list(Chunker(tokenizer, chunk_size=24, chunk_overlap=4).chunks(iter(blocks)))
    call = 128
    calls = [[c.token_count + 2 for c in taken] for taken in EmbedPool.schedule(chunks, call)]
    lengths = [c.token_count + 2 for c in chunks]
    in_order = [lengths[i : i + call] for i in range(0, len(lengths), call)]
    assert sorted(n for taken in calls for n in taken) == sorted(lengths)
    # 32 per model batch: close to the whole document sorted, below document order
    assert padded([lengths], 32) < padded(calls, 32) < padded(in_order, 32)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 200), min_size=1, max_size=600),
    groups=st.lists(st.integers(1, 40), min_size=1, max_size=600),
    count=st.integers(1, 64),
    calls=st.integers(1, 6),
)
def test_the_pool_stores_every_chunk_once_in_order_within_its_bounds(
    lengths: list[int], groups: list[int], count: int, calls: int
) -> None:
    capacity = calls * count
    pool = EmbedPool(capacity=capacity, first_ordinal=0)
    stream = [ChunkText(i, "x", 0, 1, None, None, (), token_count=n) for i, n in enumerate(lengths)]
    stored: list[int] = []
    cut = 0
    sizes = itertools.cycle(groups)
    while cut < len(stream) or len(pool):
        # The pipeline's embed stage: fill up to the capacity (a group at a time), then a call.
        while cut < len(stream) and len(pool) < capacity:
            size = next(sizes)
            pool.add(stream[cut : cut + size])
            cut += size
        assert len(pool) < capacity + max(groups)
        taken = pool.take(count)
        assert 0 < len(taken) <= count
        if not any(c.ordinal <= pool.newest - capacity for c in pool.waiting + taken):
            # nothing overtaken: the longest waiting were taken
            assert min(c.token_count for c in taken) >= max(
                (c.token_count for c in pool.waiting), default=0
            )
        run = pool.embedded(taken, np.zeros((len(taken), 2), np.float32))
        assert len(pool.done) <= 2 * capacity + count + max(groups)
        if run is not None:
            chunks, vectors = run
            assert vectors.shape == (len(chunks), 2)
            stored.extend(c.ordinal for c in chunks)
    assert stored == list(range(len(stream)))
    assert not pool.done


async def test_a_chunker_counting_with_another_tokenizer_hands_over_texts(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text(essay(20), encoding="utf-8")
    embedder = counting(model)
    # The same vocabulary in another object: the pipeline cannot know it is the model's own.
    other = Tokenizer.from_str(model.tokenizer.to_str())
    batches, vectors = await ingest(path, Chunker(other, chunk_size=40, chunk_overlap=5), embedder)

    assert embedder.calls == []
    assert embedder.texts_calls >= 1
    chunks = [chunk for batch in batches for chunk in batch]
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert stored_as_returned(chunks, vectors, embedder, by_ids=False)


async def test_chunks_through_skip_through_are_not_embedded_again(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text(essay(40), encoding="utf-8")
    chunker = Chunker(model.tokenizer, chunk_size=40, chunk_overlap=5)
    whole, everything = await ingest(path, chunker, model, batch_size=8)
    total = sum(map(len, whole))
    assert total > 20
    embedder = counting(model)
    rest, vectors = await ingest(path, chunker, embedder, skip_through=9, batch_size=8)
    ordinals = [c.ordinal for batch in rest for c in batch]
    assert ordinals == list(range(10, total))
    # The first ten were never given to the model; the rest were, once each.
    assert sum(map(len, embedder.calls)) == total - 10
    # Each stored with its own vector (batched otherwise, so equal up to the model's batching).
    assert np.einsum("ij,ij->i", vectors, everything[10:]).min() > 0.99

    # All stored already: nothing to embed, nothing to store.
    embedder = counting(model)
    rest, vectors = await ingest(path, chunker, embedder, skip_through=total - 1)
    assert rest == []
    assert len(vectors) == 0
    assert embedder.calls == []
    assert embedder.texts_calls == 0


class OrderedProvider:
    """A provider-like embedder (awaited, given texts): the local model, recording each call."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.model = model
        self.calls: list[list[str]] = []

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return await asyncio.to_thread(self.model.embed, texts)  # the loop runs meanwhile


async def test_a_provider_embedder_is_given_chunks_in_ordinal_order(
    tmp_path: Path, model: LocalEmbedder
) -> None:
    path = tmp_path / "voyage.txt"
    path.write_text("\n\n".join(essay(1 + i % 5, seed=i) for i in range(60)), encoding="utf-8")
    provider = OrderedProvider(model)
    chunker = Chunker(model.tokenizer, chunk_size=24, chunk_overlap=4)
    batches, _ = await ingest(path, chunker, provider, batch_size=16)
    chunks = [chunk for batch in batches for chunk in batch]
    assert len(chunks) > 3 * 16
    # Sorting by length gains a provider nothing: each call is the next chunks in order, so
    # none waits embedded (and paid for) behind a shorter one.
    assert [text for call in provider.calls for text in call] == [c.text for c in chunks]
    assert max(map(len, provider.calls)) == 16
