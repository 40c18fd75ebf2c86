"""The ingestion job: read -> clean -> chunk -> embed -> store, as stages joined by bounded
queues, so memory depends on the batch size and never on the file's size.

    parse + chunk   (a worker thread: pure Python, hands over groups of chunk texts)
        -> queue (one call's worth) -> pool -> embed (a provider model awaited through the
                              gateway, billed to the owner; or the local model, in a thread)
        -> queue(2) -> store (one multi-row INSERT per run of consecutive chunks)

With the local model on every core (its default), parse + chunk and embed take turns in one
worker thread instead (``_takes_every_core``): cutting beside it only slows the model down.
Storing overlaps both either way.

Each embedder call takes the ``batch_size`` longest chunks of a pool of a few calls' worth
(``EmbedPool``): its batches pad little, about as if the whole document were sorted by length,
and the first call starts on a document's first chunks. Chunks are stored in ordinal order
all the same, so a job that runs again for the same revision (its worker was killed) skips
the ordinals already stored: chunking is deterministic, so it resumes where the last run
landed, and the unique (document, index version, revision, ordinal) key makes a duplicate
impossible anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import select, text

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.documents import repository
from mainsail.documents.chunking import Chunker, ChunkText, fit_to_model
from mainsail.documents.embedders import (
    AsyncEmbedder,
    DocumentEmbedder,
    ProviderEmbedder,
    chunk_limit,
)
from mainsail.documents.models import (
    ACTIVE,
    FAILED,
    PROCESSING,
    QUEUED,
    READY,
    READY_TO_ACTIVATE,
    Document,
    IndexVersion,
)
from mainsail.documents.parsing import DocumentError, ParseLimits, parse
from mainsail.documents.storage import DocumentStore
from mainsail.embeddings.base import Embedder, TokenIdEmbedder
from mainsail.embeddings.local import default_threads
from mainsail.identity import service as identity
from mainsail.jobs.service import JobContext, PermanentError, enqueue, pending
from mainsail.llm.errors import LLMError, UpstreamRejected
from mainsail.llm.gateway import CallContext
from mainsail.quotas.service import QuotaExceeded
from mainsail.settings import JobSettings

log = get_logger(__name__)
INGEST = "ingest"
# A live version's HNSW index, built once the version is large enough for a search to use it
# (handled by search.indexing).
VECTOR_INDEX = "vector_index"
_DONE = object()
# The chunker hands over chunks in groups of batch_size / this (and at most this many groups
# wait), so the embedder can start on a document's first chunks.
_GROUPS_PER_CALL = 8
# Chunks waiting to be embedded: this many embedder calls' worth.
_POOL_CALLS = 4

Sink = Callable[[list[ChunkText], np.ndarray], Awaitable[None]]


@dataclass
class PipelineStats:
    chunks: int = 0  # chunks the document has (stored now or before)
    embedded: int = 0  # chunks embedded by this run


def _reason(exc: Exception) -> str:
    """What a failure says to the owner or an admin."""
    if isinstance(exc, QuotaExceeded):
        return exc.detail
    if isinstance(exc, LLMError):
        return exc.message
    if isinstance(exc, DocumentError):
        return exc.reason
    return type(exc).__name__


class EmbedPool:
    """Chunks waiting to be embedded, and embedded ones waiting to be stored in order.

    The embedder is handed the longest chunks waiting, so that its batches hold chunks of
    about one length and pad little (as if the whole document were sorted by length), while
    the chunks are stored strictly in ordinal order: the last ordinal stored is where a killed
    job resumes. Short chunks are left behind that way; once one has been overtaken by
    ``capacity`` later chunks, the next call takes it and the shortest others (which pad
    little together), so neither the pool nor the chunks waiting to be stored grow past about
    twice ``capacity``.

    With ``by_length`` false the chunks are taken in ordinal order (a provider model: its
    price and speed do not depend on padding, and every chunk embedded but not yet stored
    would be paid for again if the job were killed).
    """

    def __init__(
        self, *, capacity: int, first_ordinal: int, group: int = 1, by_length: bool = True
    ) -> None:
        self.capacity = capacity
        self.group = group  # chunks the chunker hands over at a time
        self.by_length = by_length
        self.waiting: list[ChunkText] = []
        self.done: dict[int, tuple[ChunkText, np.ndarray]] = {}
        self.next = first_ordinal  # the next ordinal to store
        self.newest = first_ordinal - 1

    @classmethod
    def for_calls(cls, batch_size: int, first_ordinal: int, *, by_length: bool = True) -> EmbedPool:
        """The pool ``run_pipeline`` uses for calls of ``batch_size`` chunks."""
        return cls(
            capacity=(_POOL_CALLS if by_length else 1) * batch_size,
            first_ordinal=first_ordinal,
            group=max(1, batch_size // _GROUPS_PER_CALL),
            by_length=by_length,
        )

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, chunks: list[ChunkText]) -> None:
        if chunks:
            self.waiting.extend(chunks)
            self.newest = chunks[-1].ordinal

    def take(self, count: int) -> list[ChunkText]:
        """Up to ``count`` chunks to embed: the longest, or, once a chunk has been overtaken,
        the overtaken ones and then the shortest."""
        if not self.by_length:  # added in ordinal order
            taken, self.waiting = self.waiting[:count], self.waiting[count:]
            return taken
        before = self.newest - self.capacity
        if any(chunk.ordinal <= before for chunk in self.waiting):
            self.waiting.sort(key=lambda c: (c.ordinal > before, c.token_count, c.ordinal))
        else:
            self.waiting.sort(key=lambda c: (-c.token_count, c.ordinal))
        taken, self.waiting = self.waiting[:count], self.waiting[count:]
        return taken

    @classmethod
    def schedule(cls, chunks: Sequence[ChunkText], batch_size: int) -> list[list[ChunkText]]:
        """The embedder calls ``run_pipeline`` makes for a document's ``chunks`` when embedding
        is the slower stage, as it is with the local model: the first group alone, each later
        call from a full pool."""
        first = chunks[0].ordinal if chunks else 0
        pool = cls.for_calls(batch_size, first)
        group = pool.group
        cut = min(group, len(chunks))
        pool.add(list(chunks[:cut]))  # the first call does not wait for more
        calls: list[list[ChunkText]] = []
        while len(pool):
            taken = pool.take(batch_size)
            pool.embedded(taken, np.zeros((len(taken), 0), np.float32))
            calls.append(taken)
            while cut < len(chunks) and len(pool) < pool.capacity:
                pool.add(list(chunks[cut : cut + group]))
                cut += group
        return calls

    def embedded(
        self, chunks: list[ChunkText], vectors: np.ndarray
    ) -> tuple[list[ChunkText], np.ndarray] | None:
        """Records ``chunks``' vectors; returns the run that can be stored now, in order."""
        for chunk, vector in zip(chunks, vectors, strict=True):
            self.done[chunk.ordinal] = (chunk, vector)
        run: list[tuple[ChunkText, np.ndarray]] = []
        while (item := self.done.pop(self.next, None)) is not None:
            run.append(item)
            self.next += 1
        if not run:
            return None
        return [chunk for chunk, _ in run], np.stack([vector for _, vector in run])


async def run_pipeline(
    path: Path,
    content_type: str,
    *,
    chunker: Chunker,
    embedder: Embedder | AsyncEmbedder,
    batch_size: int,
    sink: Sink,
    limits: ParseLimits | None = None,
    skip_through: int = -1,
    on_batch: Callable[[PipelineStats], Awaitable[None]] | None = None,
) -> PipelineStats:
    """Runs the stages; chunks with ``ordinal <= skip_through`` are not embedded again."""
    loop = asyncio.get_running_loop()
    # Sorting by length saves the local model its padding; a provider gains nothing by it.
    by_length = not isinstance(embedder, AsyncEmbedder)
    pool = EmbedPool.for_calls(batch_size, skip_through + 1, by_length=by_length)
    to_embed: asyncio.Queue[Any] = asyncio.Queue(maxsize=_GROUPS_PER_CALL)
    to_store: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)
    stop = threading.Event()
    stats = PipelineStats()
    # The local model reads the word pieces the chunker counted with its own tokenizer.
    reads_ids = (
        isinstance(embedder, TokenIdEmbedder)
        and chunker.source is not None
        and chunker.source is getattr(embedder, "tokenizer", None)
    )

    def put(queue: asyncio.Queue[Any], item: object) -> bool:
        """From a worker thread: ``item`` onto ``queue``, unless the pipeline is stopped."""
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=0.25)
                return True
            except FutureTimeout:
                if stop.is_set():
                    future.cancel()
                    return False

    def groups() -> Generator[list[ChunkText]]:
        """The document's chunks, cut ``pool.group`` at a time."""
        blocks = parse(path, content_type, limits or ParseLimits())
        try:
            chunks = chunker.chunks(blocks)
            while not stop.is_set() and (group := list(islice(chunks, pool.group))):
                yield group
        finally:
            blocks.close()

    def take_in(group: list[ChunkText]) -> None:
        stats.chunks += len(group)
        pool.add([chunk for chunk in group if chunk.ordinal > skip_through])

    def produce() -> None:
        try:
            for group in groups():
                if not put(to_embed, group):
                    return
        finally:
            put(to_embed, _DONE)

    async def embed() -> None:
        produced = False
        while True:
            # What has been cut so far joins the pool; wait for more only when it is empty.
            while (
                not produced
                and len(pool) < pool.capacity
                and (not len(pool) or not to_embed.empty())
            ):
                item = await to_embed.get()
                if item is _DONE:
                    produced = True
                    break
                take_in(item)
            if not len(pool):
                break
            chunks = pool.take(batch_size)
            vectors = await _embed(embedder, chunks, reads_ids=reads_ids)
            ready = pool.embedded(chunks, vectors)
            if ready is not None:
                await to_store.put(ready)
        _no_gap(pool)
        await to_store.put(_DONE)

    def cut_and_embed() -> None:
        """Both stages in turn, in one thread: the first call on the first group cut, each
        later one from a full pool (``EmbedPool.schedule``)."""
        model = cast(Embedder, embedder)  # not a provider's (``_takes_every_core``)
        cut = groups()
        try:
            first = True
            while True:
                while len(pool) < pool.capacity and not (first and len(pool)):
                    if (group := next(cut, None)) is None:
                        break
                    take_in(group)
                first = False
                if stop.is_set() or not len(pool):
                    break
                chunks = pool.take(batch_size)
                ready = pool.embedded(chunks, _embed_here(model, chunks, reads_ids=reads_ids))
                if ready is not None and not put(to_store, ready):
                    return
            if not stop.is_set():
                _no_gap(pool)
        finally:
            cut.close()
            put(to_store, _DONE)

    async def store() -> None:
        while (item := await to_store.get()) is not _DONE:
            todo, vectors = item
            await sink(todo, vectors)
            stats.embedded += len(todo)
            if on_batch is not None:
                await on_batch(stats)

    if _takes_every_core(embedder):
        workers = [asyncio.ensure_future(_in_own_thread(cut_and_embed))]
        stages = [asyncio.ensure_future(store())]
    else:
        workers = [asyncio.ensure_future(_in_own_thread(produce))]
        stages = [asyncio.ensure_future(embed()), asyncio.ensure_future(store())]
    try:
        await asyncio.gather(*workers, *stages)
    except BaseException:
        stop.set()
        for task in stages:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*workers, *stages, return_exceptions=True)
        raise
    return stats


async def _in_own_thread(work: Callable[[], None]) -> None:
    """``work`` in a thread of its own. A stage's thread lives as long as its document, mostly
    waiting on a queue: in the loop's default executor (a few threads more than cores) enough
    ingestions at once would hold all of its threads, and the embed stage's calls
    (``asyncio.to_thread``) would wait for one for ever."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    context = contextvars.copy_context()

    def settle(error: BaseException | None) -> None:
        if done.done():  # cancelled meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            context.run(work)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="ingest-stage", daemon=True).start()
    await done


def _takes_every_core(embedder: Embedder | AsyncEmbedder) -> bool:
    """Whether each of the embedder's calls keeps every core busy (the local model, by
    default). Then cutting the next chunks while it runs gains nothing and costs: a third
    runnable thread on two cores stalls ONNX Runtime's parallel sections, and the pipeline
    ran at 87-91% of the model alone against 95% with the two stages taking turns. A provider
    model, or a local one left cores to spare, has the chunker run beside it."""
    if isinstance(embedder, AsyncEmbedder):
        return False
    threads = getattr(embedder, "threads", None)
    return not isinstance(threads, int) or threads >= default_threads()


def _no_gap(pool: EmbedPool) -> None:
    if pool.done:  # an ordinal was skipped: never store past a gap (it is the resume point)
        raise RuntimeError(f"{len(pool.done)} embedded chunks follow a missing ordinal")


def _embed_here(embedder: Embedder, chunks: list[ChunkText], *, reads_ids: bool) -> np.ndarray:
    """The local model, in this thread, on the chunks' word pieces where it reads them."""
    ids = [c.token_ids for c in chunks]
    if reads_ids and isinstance(embedder, TokenIdEmbedder) and not any(i is None for i in ids):
        return embedder.embed_token_ids(cast(list[np.ndarray], ids))
    return embedder.embed([c.text for c in chunks])


async def _embed(
    embedder: Embedder | AsyncEmbedder, chunks: list[ChunkText], *, reads_ids: bool
) -> np.ndarray:
    """A provider embedder is awaited; the local one runs in a thread (CPU bound)."""
    if isinstance(embedder, AsyncEmbedder):
        return await embedder.embed_async([c.text for c in chunks])
    return await asyncio.to_thread(_embed_here, embedder, chunks, reads_ids=reads_ids)


_INSERT = text(
    """
    INSERT INTO chunks (document_id, index_version, revision, ordinal, owner_id, collection,
                        text, token_count, char_start, char_end, page, page_end, heading,
                        embedding, created_at)
    SELECT :document_id, :index_version, :revision, u.ordinal, :owner_id, :collection,
           u.text, u.tokens, u.char_start, u.char_end, u.page, u.page_end,
           ARRAY(SELECT jsonb_array_elements_text(u.heading::jsonb)),
           (CAST(:embeddings AS real[]))[(u.n - 1) * :dimension + 1 : u.n * :dimension]::vector,
           now()
    FROM unnest(CAST(:ordinals AS int[]), CAST(:texts AS text[]), CAST(:tokens AS int[]),
                CAST(:char_starts AS int[]), CAST(:char_ends AS int[]), CAST(:pages AS int[]),
                CAST(:page_ends AS int[]), CAST(:headings AS text[]))
         WITH ORDINALITY AS u(ordinal, text, tokens, char_start, char_end, page, page_end,
                              heading, n)
    ON CONFLICT (document_id, index_version, revision, ordinal) DO NOTHING
    """
)


@dataclass(frozen=True, slots=True)
class FirstVersion:
    """The index version made when there is none yet (from the settings)."""

    embedder: str
    dimension: int
    chunk_size: int
    chunk_overlap: int


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """What chunks of one index version are made with."""

    id: int
    embedder: str
    dimension: int
    chunk_size: int
    chunk_overlap: int

    @classmethod
    def of(cls, version: IndexVersion) -> VersionSpec:
        return cls(
            version.id,
            version.embedder,
            version.dimension,
            version.chunk_size,
            version.chunk_overlap,
        )


@dataclass(frozen=True, slots=True)
class Source:
    """One revision of one document, as the jobs that chunk and embed it see it."""

    document_id: uuid.UUID
    revision: int
    owner_id: uuid.UUID
    collection: str
    content_type: str
    chunking: dict[str, Any]  # per-upload chunk_size/chunk_overlap, else the version's

    @classmethod
    def of(cls, document: Document, revision: int) -> Source:
        return cls(
            document.id,
            revision,
            document.owner_id,
            document.collection,
            document.content_type,
            dict(document.chunking or {}),
        )


# How often ingestion looks again for versions created while it ran, before giving up.
MAX_VERSION_ROUNDS = 5


class Ingestor:
    """The ``ingest`` job handler and what it needs.

    A revision is written into every live index version (the active one, and any being built
    or built and not retired), so a version built while uploads go on misses none of them.
    """

    def __init__(
        self,
        db: Database,
        store: DocumentStore,
        embedders: Callable[[str], DocumentEmbedder],
        first_version: FirstVersion,
        *,
        batch_size: int,
        limits: ParseLimits | None = None,
        jobs: JobSettings | None = None,
        vector_index_above: int = 0,
    ) -> None:
        """``vector_index_above``: search's ``exact_below``. A version's HNSW index is built
        once it holds more chunks than that (before, every search of it is exact and the
        index would only cost each insert its graph search); 0: from the start."""
        self.db = db
        self.store = store
        self.embedders = embedders  # embedder name -> a loaded embedder (cached by the caller)
        self.first_version = first_version
        self.batch_size = batch_size
        self.limits = limits or ParseLimits()
        self.jobs = jobs or JobSettings()
        self.vector_index_above = vector_index_above

    async def gave_up(self, ctx: JobContext, reason: str) -> None:
        """The job ended dead without running again (its worker died on every attempt): the
        revision fails, so the document does not stay ``processing`` and the same bytes
        uploaded again retry it. A revision that became ready before its worker died stays so."""
        await self._give_up(ctx, f"Ingestion gave up after {ctx.max_attempts} attempts: {reason}")

    async def _give_up(self, ctx: JobContext, error: str) -> None:
        async with self.db.unit_of_work() as session:
            await repository.set_status(
                session,
                uuid.UUID(ctx.payload["document_id"]),
                int(ctx.payload["revision"]),
                FAILED,
                error=error,
                only_from=(QUEUED, PROCESSING),
            )

    async def __call__(self, ctx: JobContext) -> None:
        try:
            await self._ingest(ctx)
        except (Exception, asyncio.CancelledError) as exc:
            current = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and current and current.cancelling():
                raise  # stopped or its lease lost: not a failure of this run
            # A CancelledError nobody asked for is the runner's failed attempt like any other.
            # Deleted (its chunks' inserts then break the foreign key) or superseded by a newer
            # revision while it ran: nothing is left to do, and no retry would find any.
            try:
                wanted = await self._still_wanted(ctx)
            except Exception:
                raise exc from None  # the job's own error, not the check's
            if wanted:
                if ctx.attempt >= ctx.max_attempts and not isinstance(exc, PermanentError):
                    # The last attempt: the document fails with the job, wherever the error
                    # came from (before the pipeline too), so it does not stay "processing"
                    # and the same bytes uploaded again retry it.
                    await self._gave_up_after(ctx, exc)
                raise
            log.info(
                "ingest_stopped",
                document_id=ctx.payload["document_id"],
                reason="document deleted or superseded",
                error=type(exc).__name__,
            )

    async def _gave_up_after(self, ctx: JobContext, exc: BaseException) -> None:
        try:
            await self._give_up(
                ctx, f"Ingestion gave up after {ctx.attempt} attempts ({type(exc).__name__})."
            )
        except Exception:  # the database is away: the job still ends dead, its error kept
            log.warning("ingest_give_up_not_recorded", document_id=ctx.payload["document_id"])

    async def _still_wanted(self, ctx: JobContext) -> bool:
        async with self.db.autocommit() as connection:
            revision = await connection.scalar(
                select(Document.revision).where(
                    Document.id == uuid.UUID(ctx.payload["document_id"])
                )
            )
        return revision == int(ctx.payload["revision"])

    async def _ingest(self, ctx: JobContext) -> None:
        document_id = uuid.UUID(ctx.payload["document_id"])
        revision = int(ctx.payload["revision"])
        async with self.db.unit_of_work() as session:
            document = await repository.claim_for_ingest(session, document_id, revision)
            if document is None:
                log.info("ingest_skipped", document_id=str(document_id), revision=revision)
                return  # deleted, or a newer revision superseded this one
            if document.active_revision == revision and document.status == READY:
                # An earlier run made it ready, then its worker died before ending the job:
                # only what comes after activation is left to do.
                live = [VersionSpec.of(v) for v in await repository.live_versions(session)]
                source = None
            else:
                first = self.first_version
                await repository.ensure_index_version(
                    session,
                    embedder=first.embedder,
                    dimension=first.dimension,
                    chunk_size=first.chunk_size,
                    chunk_overlap=first.chunk_overlap,
                    vector_index=self.vector_index_above == 0,
                )
                versions = [VersionSpec.of(v) for v in await repository.live_versions(session)]
                source = Source.of(document, revision)
        if source is None:
            log.info("ingest_already_done", document_id=str(document_id), revision=revision)
            await asyncio.to_thread(self.store.delete_revisions, document_id, below=revision)
            await self._vector_indexes_due([version.id for version in live])
            await ctx.progress(done=True)
            return
        billing = await self.owner_context(source.owner_id, ctx)
        totals: dict[int, PipelineStats] = {}

        async def report(version_id: int, stats: PipelineStats) -> None:
            totals[version_id] = stats
            chunks = sum(s.chunks for s in totals.values())
            embedded = sum(s.embedded for s in totals.values())
            await ctx.progress(chunks=chunks, embedded=embedded)

        activated = False
        # Versions no search reads yet (being built, or ready beside the active one) that
        # could not take this revision: the upload does not fail for them (a build's own
        # sweep copies what it lacks). By version id, the error, raised after all if the
        # version became the active one meanwhile.
        missed: dict[int, Exception] = {}
        try:
            for _ in range(MAX_VERSION_ROUNDS):
                for position, version in enumerate(versions):
                    if version.id in totals:
                        continue
                    try:
                        totals[version.id] = await self.write_version(
                            source, version, billing=billing, on_batch=report
                        )
                    except (LLMError, QuotaExceeded, DocumentError) as exc:
                        if position == 0:  # the active version: the upload fails
                            raise
                        missed[version.id] = exc
                        totals[version.id] = PipelineStats()
                        async with self.db.unit_of_work() as session:
                            await repository.note_version_miss(
                                session, version.id, document_id, revision, _reason(exc)
                            )
                        log.warning(
                            "ingest_version_missed",
                            document_id=str(document_id),
                            version=version.id,
                            error=type(exc).__name__,
                        )
                        continue
                    if not totals[version.id].chunks:  # whitespace, a PDF of scans
                        raise DocumentError("No text could be extracted from the document.")
                async with self.db.unit_of_work() as session:
                    # Shared with other ingestions, exclusive of a version being created or
                    # activated: the versions seen here are all there are until commit.
                    await repository.lock_versions(session, shared=True)
                    live = [VersionSpec.of(v) for v in await repository.live_versions(session)]
                    if live and live[0].id in missed:  # activated while this ran
                        raise missed[live[0].id]
                    if all(v.id in totals for v in live):
                        # Retired while this ran: what was written there is nobody's.
                        gone = sorted(set(totals) - {v.id for v in live})
                        if gone:
                            await repository.drop_revision_chunks(
                                session, document_id, revision, gone
                            )
                        activated = await repository.activate_revision(
                            session, document_id, revision, live[0].id
                        )
                        break
                versions = live  # created while this ran: write those too
            else:
                raise RuntimeError("index versions kept changing while the document was written")
        except DocumentError as exc:
            await self._failed(document_id, revision, exc.reason)
            raise PermanentError(exc.reason) from None
        except FileNotFoundError:
            reason = "The uploaded file is no longer in storage; upload it again."
            await self._failed(document_id, revision, reason)
            raise PermanentError(reason) from None
        except (QuotaExceeded, UpstreamRejected) as exc:
            # Trying again will not help: the owner's budget is spent until the reset (an
            # admin may raise it, then re-queue the job), or the provider refuses the text.
            reason = _reason(exc)
            await self._failed(document_id, revision, reason)
            raise PermanentError(reason) from None
        if activated:
            await asyncio.to_thread(self.store.delete_revisions, document_id, below=revision)
        await self._vector_indexes_due(list(totals))
        first_stats = next(iter(totals.values()))  # of the version active when it started
        embedded = sum(s.embedded for s in totals.values())
        await ctx.progress(chunks=first_stats.chunks, embedded=embedded, done=True)
        log.info(
            "ingested",
            document_id=str(document_id),
            revision=revision,
            versions=sorted(totals),
            chunks=first_stats.chunks,
            embedded=embedded,
        )

    async def _vector_indexes_due(self, version_ids: list[int]) -> None:
        """Queues the HNSW index of each active or ready version these chunks took past
        ``vector_index_above`` chunks (once; a version being built gets its own at the end).
        Never fails the ingestion: the next one looks again."""
        if self.vector_index_above == 0:
            return
        try:
            async with self.db.unit_of_work() as session:
                connection = await session.connection()
                for version_id in version_ids:
                    version = await session.get(IndexVersion, version_id)
                    if (
                        version is not None
                        and version.state in (ACTIVE, READY_TO_ACTIVATE)
                        and not await repository.vector_index_exists(connection, version_id)
                        and await repository.vector_index_wanted(
                            connection, version_id, self.vector_index_above
                        )
                        and not await pending(session, VECTOR_INDEX, {"version_id": version_id})
                    ):
                        await enqueue(
                            session,
                            self.jobs,
                            VECTOR_INDEX,
                            {"version_id": version_id},
                            owner_id=None,
                        )
        except Exception as exc:  # the index is an optimisation; the chunks are written
            log.warning("vector_index_check_failed", error=type(exc).__name__)

    async def write_version(
        self,
        source: Source,
        version: VersionSpec,
        *,
        billing: CallContext | None,
        on_batch: Callable[[int, PipelineStats], Awaitable[None]] | None = None,
    ) -> PipelineStats:
        """Chunks and embeds ``source`` into ``version``, resuming after the ordinals already
        stored there. Raises ``DocumentError`` (unreadable), ``FileNotFoundError`` (gone from
        storage), and the embedder's errors."""
        embedder = await asyncio.to_thread(self.embedders, version.embedder)
        if isinstance(embedder, ProviderEmbedder):  # billed to the document's owner
            embedder = embedder.bind(billing)
        size = int(source.chunking.get("chunk_size", version.chunk_size))
        overlap = int(source.chunking.get("chunk_overlap", version.chunk_overlap))
        # An upload's chunk_size was checked against the model of its day; a version built
        # later may read fewer tokens, and a longer chunk would be embedded truncated.
        size, overlap = fit_to_model(size, overlap, limit=chunk_limit(embedder))
        chunker = Chunker(embedder.tokenizer, chunk_size=size, chunk_overlap=overlap)
        async with self.db.autocommit() as connection:
            stored = await repository.max_ordinal(
                connection, source.document_id, version.id, source.revision
            )
        fixed = {
            "document_id": source.document_id,
            "index_version": version.id,
            "revision": source.revision,
            "owner_id": source.owner_id,
            "collection": source.collection,
        }

        async def sink(chunks: list[ChunkText], vectors: np.ndarray) -> None:
            async with self.db.autocommit() as connection:
                await connection.execute(_INSERT, {**fixed, **_columns(chunks, vectors)})

        async def report(stats: PipelineStats) -> None:
            if on_batch is not None:
                await on_batch(version.id, stats)

        async with self.store.local_copy(source.document_id, source.revision) as path:
            return await run_pipeline(
                path,
                source.content_type,
                chunker=chunker,
                embedder=embedder,
                batch_size=self.batch_size,
                sink=sink,
                limits=self.limits,
                skip_through=stored,
                on_batch=report,
            )

    async def owner_context(self, owner_id: uuid.UUID, job: JobContext) -> CallContext:
        """The owner as the caller of the model: their budget (by their role) is reserved
        and the usage is theirs, with the job's id where a request id would be."""
        async with self.db.unit_of_work() as session:
            user = await identity.get_user(session, owner_id)
        return CallContext(
            user_id=owner_id, request_id=str(job.id), kind="ingest", role=user.role.value
        )

    async def _failed(self, document_id: uuid.UUID, revision: int, reason: str) -> None:
        async with self.db.unit_of_work() as session:
            await repository.set_status(session, document_id, revision, FAILED, error=reason)


def _columns(chunks: Sequence[ChunkText], vectors: np.ndarray) -> dict[str, Any]:
    return {
        "ordinals": [c.ordinal for c in chunks],
        "texts": [c.text.replace("\x00", "") for c in chunks],
        "tokens": [c.token_count for c in chunks],
        "char_starts": [c.char_start for c in chunks],
        "char_ends": [c.char_end for c in chunks],
        "pages": [c.page for c in chunks],
        "page_ends": [c.page_end for c in chunks],
        "headings": [json.dumps(list(c.heading)) for c in chunks],
        # One flat real[] (binary on the wire), cut into rows by the statement: no text form
        # of every float to write here and parse in PostgreSQL.
        "embeddings": vectors.astype(np.float32, copy=False).ravel().tolist(),
        "dimension": vectors.shape[1],
    }
