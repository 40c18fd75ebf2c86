"""Index versions: build one beside the active one, switch atomically, retire the old one.

A version fixes the embedder (and so the dimension) and the chunking. Creating one records it
as ``building`` and queues a ``reindex`` job, which

1. copies every document's active revision into it (parse, chunk, embed, store: the code
   ingestion runs, resuming after the ordinals already stored); ingestion meanwhile writes
   each new revision into every live version, so uploads made during the build are not
   missed (``documents.repository.lock_versions`` orders the two);
2. sweeps for documents that became searchable while it ran and still have no chunks in it,
   and drops its chunks of revisions superseded meanwhile;
3. builds the version's HNSW index ``CONCURRENTLY`` (reads and writes go on);
4. becomes ``ready`` and, when an evaluation set is configured, is measured on it.

Search reads the active version throughout. Activation is one transaction: the old version
becomes ``ready`` (still queryable by admins, still written, and can be switched back to).
Retiring stops writes to a version and queues an ``index_purge`` job that drops its index and
deletes its chunks in batches. A build that fails leaves the active version untouched: it
only ever writes rows of its own version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mainsail.core.db import Database, utcnow
from mainsail.core.errors import AppError, Conflict, NotFound, UnprocessableContent
from mainsail.core.logging import get_logger
from mainsail.documents import repository as documents
from mainsail.documents.chunking import default_overlap
from mainsail.documents.embedders import (
    LOCAL_DIMENSION,
    LOCAL_MAX_TOKENS,
    Embedders,
    is_local,
    local_name,
)
from mainsail.documents.models import (
    ACTIVE,
    BUILD_FAILED,
    BUILDING,
    READY_TO_ACTIVATE,
    RETIRED,
    IndexVersion,
)
from mainsail.documents.parsing import DocumentError
from mainsail.documents.pipeline import Ingestor, Source, VersionSpec
from mainsail.identity.models import User
from mainsail.jobs import service as jobs
from mainsail.jobs.service import JobContext
from mainsail.llm.errors import LLMError, UpstreamRejected
from mainsail.quotas.service import QuotaExceeded
from mainsail.search.metrics import ndcg_at, recall_at
from mainsail.search.schemas import Filters, IndexVersionIn, Mode, SearchIn
from mainsail.search.service import Searcher
from mainsail.settings import Settings

log = get_logger(__name__)

REINDEX = "reindex"
PURGE = "index_purge"
DOCUMENT_PAGE = 200  # documents listed per statement while copying
PURGE_BATCH = 5000  # chunks deleted per statement when a version is retired
MAX_SWEEPS = 5
MAX_REPORTED_ERRORS = documents.MAX_REPORTED_ERRORS


class QualityRegression(AppError):
    status, code, title = 409, "quality_regression", "The new index version retrieves worse"


class VersionStateConflict(Conflict):
    code = "index_version_state"


class VersionIncomplete(AppError):
    status, code, title = 409, "index_version_incomplete", "The index version lacks documents"


# The evaluation set ---------------------------------------------------------------------


class _EvalQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Annotated[str, Field(min_length=1, max_length=100_000)]
    # Relevant documents by filename or id: a list (gain 1 each) or {name: gain}.
    relevant: list[str] | dict[str, Annotated[float, Field(ge=0)]]


class _EvalFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    owner: Annotated[str, Field(min_length=1)]  # email or user id: whose documents
    mode: Mode = "hybrid"
    k: Annotated[int, Field(ge=10, le=1000)] = 100  # Recall@k
    filters: Filters = Field(default_factory=Filters)
    queries: Annotated[list[_EvalQuery], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class EvalSet:
    owner: str
    mode: Mode
    k: int
    filters: Filters
    queries: list[tuple[str, dict[str, float]]]
    fingerprint: str  # of the file's bytes: figures from another file are not compared


def load_eval_set(path: Path) -> EvalSet:
    raw = path.read_bytes()
    try:
        parsed = _EvalFile.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"evaluation set {path}: {exc}") from None
    queries = [
        (
            q.query,
            dict.fromkeys(q.relevant, 1.0) if isinstance(q.relevant, list) else dict(q.relevant),
        )
        for q in parsed.queries
    ]
    for number, (query, _) in enumerate(queries, 1):
        try:  # each one a search the service takes (not blank, no NUL, ...)
            SearchIn(query=query, query_syntax="plain", mode=parsed.mode, filters=parsed.filters)
        except ValidationError as exc:
            problems = "; ".join(error["msg"] for error in exc.errors())
            raise ValueError(
                f"evaluation set {path}: query {number} is not a valid search: {problems}"
            ) from None
    return EvalSet(
        owner=parsed.owner,
        mode=parsed.mode,
        k=parsed.k,
        filters=parsed.filters,
        queries=queries,
        fingerprint=hashlib.sha256(raw).hexdigest()[:16],
    )


# The service ----------------------------------------------------------------------------


class IndexVersions:
    """Creates, builds, measures, activates and retires index versions."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        embedders: Embedders,
        ingestor: Ingestor,
        searcher: Searcher,
    ) -> None:
        self.db = db
        self.settings = settings
        self.embedders = embedders
        self.ingestor = ingestor
        self.searcher = searcher

    # Requests --------------------------------------------------------------------------

    def _spec(self, body: IndexVersionIn) -> tuple[str, int, int, int]:
        """(embedder, dimension, chunk_size, chunk_overlap), checked; 422 otherwise."""
        config = self.settings.documents
        name = body.embedder or (
            local_name(quantized=config.embed_quantized)
            if config.embedder == "local"
            else config.embedder
        )
        if is_local(name):
            if name not in (local_name(quantized=True), local_name(quantized=False)):
                raise UnprocessableContent(
                    f"Unknown embedder {name!r}: the local model is "
                    f"{local_name(quantized=True)!r} or {local_name(quantized=False)!r}."
                )
            dimension, max_tokens = LOCAL_DIMENSION, LOCAL_MAX_TOKENS - 2
        else:
            try:
                provider = self.embedders.provider(name)
            except (LookupError, LLMError) as exc:
                message = exc.message if isinstance(exc, LLMError) else str(exc)
                raise UnprocessableContent(f"Embedder {name!r} cannot be used: {message}") from None
            name, dimension, max_tokens = provider.name, provider.dimension, provider.max_tokens
        size = body.chunk_size or config.chunk_size
        overlap = config.chunk_overlap if body.chunk_overlap is None else body.chunk_overlap
        if body.chunk_size is not None and body.chunk_overlap is None:
            overlap = default_overlap(overlap, size)
        if overlap >= size:
            raise UnprocessableContent("chunk_overlap must be smaller than chunk_size.")
        if size > max_tokens:
            raise UnprocessableContent(
                f"chunk_size {size} is more than {name} reads at once ({max_tokens} tokens)."
            )
        return name, dimension, size, overlap

    async def create(self, body: IndexVersionIn) -> IndexVersion:
        embedder, dimension, size, overlap = self._spec(body)
        async with self.db.unit_of_work() as session:
            # Exclusive of ingestion's final check: from here on every new revision is
            # written into this version too, or was active before the build lists documents.
            await documents.lock_versions(session, shared=False)
            building = await session.scalar(
                select(IndexVersion.id).where(IndexVersion.state == BUILDING).limit(1)
            )
            if building is not None:
                raise VersionStateConflict(
                    f"Index version {building} is being built; wait for it or retire it first."
                )
            version = IndexVersion(
                embedder=embedder,
                dimension=dimension,
                chunk_size=size,
                chunk_overlap=overlap,
                state=BUILDING,
                progress={"phase": "queued"},
            )
            session.add(version)
            await session.flush()
            # An index of the new id's name is a leftover of a version whose row is gone (the
            # id sequence was reset): it may be of another dimension, so it goes first. Only
            # then, so the usual path takes no lock on the chunks table.
            leftover = documents.vector_index_name(version.id)
            if await session.scalar(text("SELECT to_regclass(:n)"), {"n": leftover}) is not None:
                await session.execute(text(f"DROP INDEX IF EXISTS {leftover}"))
            job = await jobs.enqueue(
                session, self.settings.jobs, REINDEX, {"version_id": version.id}, owner_id=None
            )
            version.job_id = job.id
            await session.flush()
        log.info("index_version_created", version=version.id, embedder=embedder, chunk=size)
        return version

    async def get(self, version_id: int) -> IndexVersion:
        async with self.db.unit_of_work() as session:
            version = await session.get(IndexVersion, version_id)
        if version is None:
            raise NotFound(f"No index version {version_id}.")
        return version

    async def page(self, *, limit: int, offset: int) -> tuple[list[IndexVersion], int]:
        """(versions, newest first, of the page; how many there are)."""
        async with self.db.unit_of_work() as session:
            total = await session.scalar(select(func.count()).select_from(IndexVersion))
            rows = await session.scalars(
                select(IndexVersion).order_by(IndexVersion.id.desc()).limit(limit).offset(offset)
            )
            return list(rows), int(total or 0)

    async def activate(
        self, version_id: int, *, force: bool
    ) -> tuple[IndexVersion, int | None, dict[str, Any] | None]:
        """(the version, the one it replaced, the gate's figures). 409 unless it is ready, or
        when the gate finds it worse than the active one and ``force`` is not set."""
        version = await self.get(version_id)
        if version.state == ACTIVE:
            return version, None, None
        if version.state != READY_TO_ACTIVATE:
            raise VersionStateConflict(
                f"Index version {version_id} is {version.state}; only a ready one is activated."
            )
        gate: dict[str, Any] | None = None
        if self.settings.search.eval_set is not None and not force:
            gate = await self._gate(version)
        async with self.db.unit_of_work() as session:
            await documents.lock_versions(session, shared=False)
            version_row = await session.get(IndexVersion, version_id, with_for_update=True)
            if version_row is not None and version_row.state == ACTIVE:
                return version_row, None, None  # a second request (a retry) got there first
            if version_row is None or version_row.state != READY_TO_ACTIVATE:
                raise VersionStateConflict(f"Index version {version_id} changed meanwhile.")
            previous = await session.scalar(
                select(IndexVersion).where(IndexVersion.state == ACTIVE).with_for_update()
            )
            if gate is not None and gate["active_id"] != (previous.id if previous else None):
                raise VersionStateConflict(
                    f"Another version was activated while version {version_id} was measured "
                    "against the one before it; activate again to compare it with the new one."
                )
            if previous is not None:
                previous.state = READY_TO_ACTIVATE
                await session.flush()  # one active version at a time, even within this
            if not force:
                await self._refuse_if_incomplete(session, version_id)
            version_row.state, version_row.activated_at = ACTIVE, utcnow()
            if gate is not None:
                version_row.quality = gate["candidate"]
            await session.flush()
            await session.execute(_CHUNK_COUNTS, {"version": version_id})
        log.info(
            "index_version_activated",
            version=version_id,
            previous=previous.id if previous else None,
            forced=force,
        )
        return version_row, (previous.id if previous else None), gate

    @staticmethod
    async def _refuse_if_incomplete(session: AsyncSession, version_id: int) -> None:
        """409 when searchable documents have none of their active revision in the version
        (the build skipped them: the file gone, the provider refusing), as they would vanish
        from search. Taken under the versions lock, so no upload changes the answer."""
        rows = (
            await session.execute(
                _MISSING, {"version": version_id, "limit": MAX_REPORTED_ERRORS + 1}
            )
        ).all()
        if not rows:
            return
        listed = [str(row.id) for row in rows[:MAX_REPORTED_ERRORS]]
        more = " or more" if len(rows) > MAX_REPORTED_ERRORS else ""
        raise VersionIncomplete(
            f"Index version {version_id} lacks {len(listed)}{more} searchable documents, "
            "which search would no longer find (see the version's progress.errors). Delete "
            "them or upload a new revision of each (it is written into this version too), "
            "build another version once their cause is fixed, or activate with force=true to "
            "switch anyway.",
            extra={"missing_documents": listed},
        )

    async def _gate(self, version: IndexVersion) -> dict[str, Any]:
        async with self.db.unit_of_work() as session:
            active_id = await session.scalar(
                select(IndexVersion.id).where(IndexVersion.state == ACTIVE)
            )
        candidate = await self.measure(version.id)
        active = await self.measure(active_id) if active_id is not None else None
        margin = self.settings.search.eval_margin
        async with self.db.unit_of_work() as session:
            row = await session.get(IndexVersion, version.id, with_for_update=True)
            if row is not None:
                row.quality = candidate
        gate = {"candidate": candidate, "active": active, "margin": margin, "active_id": active_id}
        if candidate is not None and active is not None:
            worse = [
                name
                for name in ("ndcg_at_10", "recall_at_k")
                if candidate[name] < active[name] - margin
            ]
            if worse:
                raise QualityRegression(
                    f"Index version {version.id} is worse than the active version "
                    f"{active_id} on {' and '.join(worse)} by more than {margin}: "
                    + ", ".join(
                        f"{name} {candidate[name]:.4f} vs {active[name]:.4f}" for name in worse
                    )
                    + ". Activate with force=true to switch anyway.",
                    extra={"quality": gate},
                )
        return gate

    async def retire(self, version_id: int) -> tuple[IndexVersion, uuid.UUID | None]:
        async with self.db.unit_of_work() as session:
            await documents.lock_versions(session, shared=False)
            version = await session.get(IndexVersion, version_id, with_for_update=True)
            if version is None:
                raise NotFound(f"No index version {version_id}.")
            if version.state == ACTIVE:
                raise VersionStateConflict(
                    "The active version cannot be retired; activate another one first."
                )
            if version.state == RETIRED:
                return version, None
            version.state, version.retired_at = RETIRED, utcnow()
            job = await jobs.enqueue(
                session, self.settings.jobs, PURGE, {"version_id": version_id}, owner_id=None
            )
            await session.flush()
        log.info("index_version_retired", version=version_id)
        return version, job.id

    # Measuring -------------------------------------------------------------------------

    async def measure(self, version_id: int) -> dict[str, Any] | None:
        """nDCG@10 and Recall@k of ``version_id`` on the evaluation set (None without one).
        Documents are ranked by their best passage; relevance names documents by filename
        or id, among the evaluation owner's documents."""
        path = self.settings.search.eval_set
        if path is None:
            return None
        try:
            evaluation = await asyncio.to_thread(load_eval_set, path)
        except (OSError, ValueError) as exc:
            raise UnprocessableContent(
                f"The evaluation set cannot be read ({exc}); fix SEARCH__EVAL_SET, or "
                "activate with force=true to skip the quality gate."
            ) from None
        owner_id = await self._owner(evaluation.owner)
        names = {name for _, relevant in evaluation.queries for name in relevant}
        named = await self._documents_named(owner_id, names)
        k = min(evaluation.k, self.settings.search.max_top_k)
        ndcgs: list[float] = []
        recalls: list[float] = []
        for query, relevant in evaluation.queries:
            gains = {doc: gain for name, gain in relevant.items() for doc in named.get(name, ())}
            if not any(gain > 0 for gain in gains.values()):
                continue  # none of its documents is there: it says nothing about the index
            request = SearchIn(
                query=query,
                query_syntax="plain",
                mode=evaluation.mode,
                top_k=k,
                filters=evaluation.filters,
            )
            result = await self.searcher.search(owner_id, request, version_id=version_id)
            ranked = list(dict.fromkeys(hit.document_id for hit in result.results))
            ndcgs.append(ndcg_at(ranked, gains, 10))
            recalls.append(recall_at(ranked, gains, k))
        if not ndcgs:
            raise UnprocessableContent(
                "No query of the evaluation set names a document its owner has; check "
                "SEARCH__EVAL_SET."
            )
        return {
            "ndcg_at_10": round(sum(ndcgs) / len(ndcgs), 4),
            "recall_at_k": round(sum(recalls) / len(recalls), 4),
            "k": k,
            "mode": evaluation.mode,
            "queries": len(ndcgs),
            "eval_set": evaluation.fingerprint,
            "measured_at": utcnow().isoformat(),
        }

    async def _owner(self, owner: str) -> uuid.UUID:
        async with self.db.unit_of_work() as session:
            try:
                user_id: uuid.UUID | None = await session.scalar(
                    select(User.id).where(User.id == uuid.UUID(owner))
                )
            except ValueError:
                email = owner.strip().lower()
                user_id = await session.scalar(select(User.id).where(User.email == email))
        if user_id is None:
            raise UnprocessableContent(f"The evaluation set's owner {owner!r} is not a user.")
        return user_id

    async def _documents_named(
        self, owner_id: uuid.UUID, names: set[str]
    ) -> dict[str, set[uuid.UUID]]:
        async with self.db.autocommit() as connection:
            rows = await connection.execute(
                text(
                    "SELECT id, filename FROM documents WHERE owner_id = :owner "
                    "AND (filename = ANY(CAST(:names AS text[])) "
                    "OR id::text = ANY(CAST(:names AS text[])))"
                ),
                {"owner": owner_id, "names": sorted(names)},
            )
            out: dict[str, set[uuid.UUID]] = {}
            for row in rows:
                for key in (str(row.id), row.filename):
                    if key in names:
                        out.setdefault(key, set()).add(row.id)
        return out

    # The jobs --------------------------------------------------------------------------

    async def build(self, ctx: JobContext) -> None:
        """The ``reindex`` job: resumable, since each document resumes where it stopped."""
        version_id = int(ctx.payload["version_id"])
        try:
            # Its first step too: a build that cannot start ends failed, not "building" for
            # ever behind a dead job (which would refuse every new build).
            spec = await self._start(version_id)
            if spec is not None:
                await self._build(ctx, spec)
        except jobs.PermanentError as exc:
            await self._fail(version_id, exc.reason)
            raise
        except Exception as exc:
            if ctx.attempt >= ctx.max_attempts:
                await self._fail(
                    version_id, f"Gave up after {ctx.attempt} attempts: {type(exc).__name__}"
                )
            raise

    async def _start(self, version_id: int) -> VersionSpec | None:
        """The version to build, now ``building``; None when there is nothing to build."""
        async with self.db.unit_of_work() as session:
            # Exclusive of ingestion's final check, as in ``create``: a re-queued build that
            # goes on gets every new revision from here on.
            await documents.lock_versions(session, shared=False)
            version = await session.get(IndexVersion, version_id, with_for_update=True)
            if version is None or version.state not in (BUILDING, BUILD_FAILED):
                log.info("reindex_skipped", version=version_id)
                return None  # built already, or retired
            if version.state == BUILD_FAILED:  # re-queued: one build at a time, as in create
                other = await session.scalar(
                    select(IndexVersion.id)
                    .where(IndexVersion.state == BUILDING, IndexVersion.id != version_id)
                    .limit(1)
                )
                if other is not None:
                    version.error = (
                        f"Index version {other} is being built; re-queue this build once it "
                        "is done."
                    )
                    log.info("reindex_deferred", version=version_id, building=other)
                    return None
            version.state, version.error = BUILDING, None  # a re-queued build goes on
            return VersionSpec.of(version)

    async def build_gave_up(self, ctx: JobContext, reason: str) -> None:
        """The ``reindex`` job ended dead without running again: the version's build failed
        (re-queue the job to go on)."""
        await self._fail(int(ctx.payload["version_id"]), f"Gave up: {reason}")

    async def _build(self, ctx: JobContext, spec: VersionSpec) -> None:
        progress: dict[str, Any] = {
            "phase": "documents",
            "documents": 0,
            "done": 0,
            "chunks": 0,
            "skipped": 0,
            "errors": [],
        }

        noted = _Noted()

        async def report(first: bool = False) -> None:
            await ctx.progress(**progress)
            async with self.db.unit_of_work() as session:
                version = await session.get(IndexVersion, spec.id, with_for_update=True)
                if version is None:
                    return
                if not first:  # the first resets what an earlier attempt left
                    noted.take(progress, version.progress or {})
                version.progress = json.loads(_json(progress))
                noted.written(progress)

        # The documents searchable now, by id: later ones are written into this version by
        # their own ingestion (it writes every live version) or found by the sweep below.
        async with self.db.autocommit() as connection:
            counted = (
                await connection.execute(
                    text(
                        "SELECT count(*) AS n, (SELECT id FROM documents WHERE "
                        "active_revision IS NOT NULL ORDER BY id DESC LIMIT 1) AS last "
                        "FROM documents WHERE active_revision IS NOT NULL"
                    )
                )
            ).one()
        progress["documents"] = int(counted.n)
        last = counted.last or uuid.UUID(int=0)
        await report(first=True)
        copied: set[tuple[uuid.UUID, int]] = set()  # (document, revision) copied or skipped
        after = uuid.UUID(int=0)
        while True:
            async with self.db.autocommit() as connection:
                if not await self._building(connection, spec.id):
                    log.info("reindex_stopped", version=spec.id)
                    await self._purge_if_retired(connection, spec.id)
                    return
                rows = (
                    await connection.execute(
                        _PAGE, {"after": after, "last": last, "limit": DOCUMENT_PAGE}
                    )
                ).all()
            if not rows:
                break
            for row in rows:
                copied.add((row.id, int(row.active_revision)))
                await self._copy(ctx, spec, row, progress)
            after = rows[-1].id
            await report()
        # Documents that became searchable while the pages were read, and had no live-version
        # write of this one (ingested by a job that started before it existed), or whose new
        # revision became active after their page. One the pages skipped is not tried again.
        seen = {document_id for document_id, _ in copied}
        for _ in range(MAX_SWEEPS):
            async with self.db.autocommit() as connection:
                rows = (
                    await connection.execute(_MISSING, {"version": spec.id, "limit": 10_000})
                ).all()
            todo = [row for row in rows if (row.id, int(row.active_revision)) not in copied]
            if not todo:
                break
            for row in todo:
                copied.add((row.id, int(row.active_revision)))
                again = row.id in seen
                seen.add(row.id)
                if not again:
                    progress["documents"] += 1
                await self._copy(ctx, spec, row, progress, again=again)
            await report()
        async with self.db.autocommit() as connection:
            await connection.execute(_STALE, {"version": spec.id})
            if not await self._building(connection, spec.id):
                await self._purge_if_retired(connection, spec.id)
                return
        # Every document is handled: one counted, then deleted before its page, is no more.
        progress["documents"] = progress["done"]
        progress["phase"] = "index"
        await report()
        await self._build_index(spec)
        progress["phase"] = "measure" if self.settings.search.eval_set else "done"
        async with self.db.unit_of_work() as session:
            version = await session.get(IndexVersion, spec.id, with_for_update=True)
            state = version.state if version is not None else None
            if version is not None and state == BUILDING:
                noted.take(progress, version.progress or {})
                await noted.settle(session, spec.id, progress)
                version.state, version.progress = READY_TO_ACTIVATE, json.loads(_json(progress))
                noted.written(progress)
        if state != BUILDING:  # retired while its index was built: the purge ran before
            async with self.db.autocommit() as connection:
                await self._purge_if_retired(connection, spec.id)
            return
        log.info("index_version_built", version=spec.id, chunks=progress["chunks"])
        if self.settings.search.eval_set is not None:
            try:
                quality = await self.measure(spec.id)
            except (AppError, LLMError, ValueError, OSError) as exc:  # built all the same
                reason = (
                    exc.detail
                    if isinstance(exc, AppError)
                    else exc.message
                    if isinstance(exc, LLMError)
                    else str(exc)
                )
                quality = {"error": reason}
            progress["phase"] = "done"
            async with self.db.unit_of_work() as session:
                version = await session.get(IndexVersion, spec.id, with_for_update=True)
                if version is not None:
                    noted.take(progress, version.progress or {})
                    await noted.settle(session, spec.id, progress)
                    version.quality, version.progress = quality, json.loads(_json(progress))

    async def _copy(
        self,
        ctx: JobContext,
        spec: VersionSpec,
        row: Any,
        progress: dict[str, Any],
        *,
        again: bool = False,
    ) -> None:
        """One document's active revision into the version; an unreadable one is skipped
        (and listed), one deleted or replaced meanwhile is not an error. ``again``: a newer
        revision of a document already counted (its chunks count, not the document)."""
        source = Source(
            row.id,
            int(row.active_revision),
            row.owner_id,
            row.collection,
            row.content_type,
            dict(row.chunking or {}),
        )
        billing = (
            None
            if is_local(spec.embedder)
            else await self.ingestor.owner_context(row.owner_id, ctx)
        )
        reason: str | None = None
        try:
            stats = await self.ingestor.write_version(source, spec, billing=billing)
            progress["chunks"] += stats.chunks
        except DocumentError as exc:
            reason = exc.reason
        except (FileNotFoundError, IntegrityError):
            if await self._still_current(source):
                reason = "The file is no longer in storage."
        except (QuotaExceeded, UpstreamRejected) as exc:
            reason = exc.detail if isinstance(exc, QuotaExceeded) else exc.message
        if again:
            if reason is not None:
                log.warning("reindex_document_skipped", version=spec.id, document_id=str(row.id))
            return
        progress["done"] += 1
        # One counted before it became searchable (still being ingested when the build
        # counted) is copied all the same: the count follows.
        progress["documents"] = max(progress["documents"], progress["done"])
        if reason is not None:
            progress["skipped"] += 1
            if len(progress["errors"]) < MAX_REPORTED_ERRORS:
                progress["errors"].append({"document_id": str(row.id), "error": reason})
            log.warning("reindex_document_skipped", version=spec.id, document_id=str(row.id))

    async def _still_current(self, source: Source) -> bool:
        """Whether the revision is still the document's searchable one (not deleted, not
        replaced: a replacement is written into this version by its own ingestion)."""
        async with self.db.autocommit() as connection:
            current = await connection.scalar(
                text("SELECT active_revision FROM documents WHERE id = :id"),
                {"id": source.document_id},
            )
        return bool(current == source.revision)

    @staticmethod
    async def _building(connection: AsyncConnection, version_id: int) -> bool:
        state = await connection.scalar(
            text("SELECT state FROM index_versions WHERE id = :v"), {"v": version_id}
        )
        return bool(state == BUILDING)

    async def _build_index(self, spec: VersionSpec) -> None:
        """The version's HNSW index, if it holds enough chunks for a search to use it."""
        above = self.settings.search.exact_below
        async with self.db.autocommit() as connection:
            if above == 0 or await documents.vector_index_wanted(connection, spec.id, above):
                await documents.build_vector_index(connection, spec.id, spec.dimension)

    async def build_vector_index(self, ctx: JobContext) -> None:
        """The ``vector_index`` job: a live version's HNSW index, queued by the ingestion that
        took the version past ``exact_below`` chunks (a version being built gets its own at
        the end of its build)."""
        version_id = int(ctx.payload["version_id"])
        async with self.db.autocommit() as connection:
            row = (
                await connection.execute(
                    text("SELECT state, dimension FROM index_versions WHERE id = :v"),
                    {"v": version_id},
                )
            ).first()
            if row is None or row.state not in (ACTIVE, READY_TO_ACTIVATE):
                log.info("vector_index_skipped", version=version_id)
                return  # retired, failed, or still building
            await documents.build_vector_index(connection, version_id, int(row.dimension))
        log.info("vector_index_built", version=version_id)

    async def _fail(self, version_id: int, reason: str) -> None:
        async with self.db.unit_of_work() as session:
            version = await session.get(IndexVersion, version_id, with_for_update=True)
            if version is not None and version.state == BUILDING:
                version.state, version.error = BUILD_FAILED, reason[:2000]
        log.warning("index_version_failed", version=version_id, error=reason[:200])

    async def purge(self, ctx: JobContext) -> None:
        """The ``index_purge`` job: a retired version's index, then its chunks in batches."""
        version_id = int(ctx.payload["version_id"])
        async with self.db.autocommit() as connection:
            state = await connection.scalar(
                text("SELECT state FROM index_versions WHERE id = :v"), {"v": version_id}
            )
            if state != RETIRED:
                return  # not retired (any more): nothing to remove
            await _drop_vector_index(connection, version_id)
            deleted = await _delete_chunks(connection, version_id, ctx)
        await ctx.progress(deleted=deleted, done=True)
        log.info("index_version_purged", version=version_id, chunks=deleted)

    @staticmethod
    async def _purge_if_retired(connection: AsyncConnection, version_id: int) -> None:
        """A build that finds its version retired deletes what it wrote: the purge job may
        have run while a page was being copied."""
        state = await connection.scalar(
            text("SELECT state FROM index_versions WHERE id = :v"), {"v": version_id}
        )
        if state == RETIRED:
            # The build may have made its index after the purge job ran.
            await _drop_vector_index(connection, version_id)
            await _delete_chunks(connection, version_id)


async def _drop_vector_index(connection: AsyncConnection, version_id: int) -> None:
    """Drops a version's HNSW index without blocking reads (an autocommit connection)."""
    await connection.execute(text("SET statement_timeout = 0"))
    try:
        name = documents.vector_index_name(version_id)
        await connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
    finally:
        await connection.execute(text("RESET statement_timeout"))


async def _delete_chunks(
    connection: AsyncConnection, version_id: int, ctx: JobContext | None = None
) -> int:
    """Deletes a version's chunks in batches (an autocommit connection); how many."""
    deleted = 0
    while True:
        result = await connection.execute(_PURGE, {"version": version_id, "batch": PURGE_BATCH})
        if not result.rowcount:
            return deleted
        deleted += result.rowcount
        if ctx is not None:
            await ctx.progress(deleted=deleted)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


_PAGE = text(
    """
    SELECT id, active_revision, owner_id, collection, content_type, chunking
    FROM documents
    WHERE active_revision IS NOT NULL AND id > :after AND id <= :last
    ORDER BY id
    LIMIT :limit
    """
)


@dataclass(slots=True)
class _Noted:
    """Revisions that uploads could not write into the version being built, which they list
    (with their revision) on its stored progress (``documents.note_version_miss``): the
    build's own writes of its progress keep them; once built, the count and the list are
    settled against what the version actually lacks."""

    skipped: int = 0  # the stored ``skipped`` as the build last wrote it
    taken: set[tuple[str, int]] = field(default_factory=set)  # notes taken in

    def take(self, progress: dict[str, Any], stored: dict[str, Any]) -> None:
        """Into ``progress``, what uploads noted since the build last wrote it: one entry a
        document (the build may list it too)."""
        added = max(0, int(stored.get("skipped") or 0) - self.skipped)
        listed = {e.get("document_id") for e in progress["errors"]}
        for entry in stored.get("errors") or []:
            key = (entry.get("document_id"), entry.get("revision"))
            if "revision" not in entry or key in self.taken:
                continue  # the build's own, or taken in already
            self.taken.add(key)
            if entry.get("document_id") in listed:
                added -= 1  # counted once already
            elif len(progress["errors"]) < MAX_REPORTED_ERRORS:
                progress["errors"].append(entry)
                listed.add(entry.get("document_id"))
        progress["skipped"] += max(0, added)

    def written(self, progress: dict[str, Any]) -> None:
        self.skipped = progress["skipped"]

    @staticmethod
    async def settle(session: AsyncSession, version_id: int, progress: dict[str, Any]) -> None:
        """``skipped``: the searchable documents the version lacks, counted; ``errors``: the
        listed ones of those (one the build or an upload could not write, then copied or
        deleted, is no longer)."""
        missing = {
            str(row.id)
            for row in await session.execute(
                _MISSING, {"version": version_id, "limit": MISSING_SETTLED}
            )
        }
        progress["skipped"] = len(missing)
        if len(missing) >= MISSING_SETTLED:
            progress["skipped"] = int(
                await session.scalar(_MISSING_COUNT, {"version": version_id}) or 0
            )
            return  # too many to check the list against
        listed: dict[str, dict[str, Any]] = {}  # one entry a document, the first
        for entry in progress["errors"]:
            if entry.get("document_id") in missing:
                listed.setdefault(entry["document_id"], entry)
        progress["errors"] = list(listed.values())


# Up to this many missing documents are listed when a build settles its progress.
MISSING_SETTLED = 10_000


# Searchable documents with text (an empty one has no chunks in any version) whose active
# revision has no chunk in the version.
_MISSING_WHERE = """
    FROM documents d
    WHERE d.active_revision IS NOT NULL AND d.chunk_count > 0
      AND NOT EXISTS (
          SELECT 1 FROM chunks c
          WHERE c.document_id = d.id AND c.index_version = :version
            AND c.revision = d.active_revision
      )
"""
_MISSING = text(
    "SELECT d.id, d.active_revision, d.owner_id, d.collection, d.content_type, d.chunking"
    + _MISSING_WHERE
    + "ORDER BY d.id LIMIT :limit"
)
_MISSING_COUNT = text("SELECT count(*)" + _MISSING_WHERE)

# Chunks of revisions replaced while the build copied them (a newer one is active).
_STALE = text(
    """
    DELETE FROM chunks c USING documents d
    WHERE c.index_version = :version AND d.id = c.document_id
      AND c.revision < d.active_revision
    """
)

# What each searchable document shows as its chunk count: that of the newly active version,
# 0 for one the build skipped (no search finds it there).
_CHUNK_COUNTS = text(
    """
    UPDATE documents d SET chunk_count = coalesce(s.n, 0)
    FROM documents d0 LEFT JOIN (
        SELECT c.document_id, count(*) AS n
        FROM chunks c JOIN documents d2
          ON d2.id = c.document_id AND c.revision = d2.active_revision
        WHERE c.index_version = :version
        GROUP BY c.document_id
    ) AS s ON s.document_id = d0.id
    WHERE d.id = d0.id AND d0.active_revision IS NOT NULL
      AND d.chunk_count <> coalesce(s.n, 0)
    """
)

_PURGE = text(
    """
    DELETE FROM chunks WHERE id IN (
        SELECT id FROM chunks WHERE index_version = :version LIMIT :batch
    )
    """
)
