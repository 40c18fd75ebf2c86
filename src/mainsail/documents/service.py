"""Creating, reading and deleting documents; the rules of re-upload.

- The same bytes from the same owner in the same collection: the existing document (200), no
  new job.
- Changed bytes under an existing filename: a new revision of that document (202, a job);
  its chunks replace the old ones atomically when the job finishes.
- Anything else: a new document (202, a job).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from mainsail.core.errors import NotFound, UnprocessableContent, UnsupportedMediaType
from mainsail.core.principal import Principal
from mainsail.documents import repository
from mainsail.documents.models import FAILED, QUEUED, Document
from mainsail.documents.parsing import SUPPORTED, UnsupportedType, sniff_file
from mainsail.documents.pipeline import INGEST
from mainsail.documents.schemas import metadata_problem
from mainsail.documents.storage import DocumentStore, StagedFile
from mainsail.jobs import service as jobs
from mainsail.settings import JobSettings


@dataclass(frozen=True, slots=True)
class Chunking:
    chunk_size: int
    chunk_overlap: int


@dataclass(frozen=True, slots=True)
class Created:
    document: Document
    created: bool  # False: the same bytes were already there


def check_chunking(chunking: Chunking | None, *, max_tokens: int) -> None:
    if chunking is None:
        return
    if chunking.chunk_overlap >= chunking.chunk_size:
        raise UnprocessableContent("chunk_overlap must be smaller than chunk_size.")
    if chunking.chunk_size > max_tokens:
        raise UnprocessableContent(
            f"chunk_size is {chunking.chunk_size}; the embedding model reads at most "
            f"{max_tokens} tokens."
        )


async def create(
    session: AsyncSession,
    store: DocumentStore,
    job_settings: JobSettings,
    principal: Principal,
    staged: StagedFile,
    *,
    filename: str | None,
    collection: str,
    metadata: dict[str, Any] | None,
    chunking: Chunking | None,
) -> Created:
    """The upload as a new document, or as a new revision of the one of that name (or of those
    bytes after a failure). ``metadata``: None keeps a revised document's own (a new one gets
    none)."""
    try:
        content_type = sniff_file(staged.path, filename)
    except UnsupportedType as exc:
        staged.path.unlink(missing_ok=True)
        raise UnsupportedMediaType(exc.reason, extra={"supported": sorted(SUPPORTED)}) from None
    if staged.size == 0:
        staged.path.unlink(missing_ok=True)
        raise UnprocessableContent("The document is empty.")
    owner = principal.user_id
    same = await repository.find_same_bytes(
        session, owner, collection, staged.sha256, prefer=filename
    )
    # Bytes another document holds, under the name of a document of other bytes: that
    # document changed (to match the other), a revision of it, not the other one.
    if (
        same is not None
        and filename is not None
        and same.filename != filename
        and await repository.find_by_name(session, owner, collection, filename, lock=False)
    ):
        same = None
    if same is not None and same.status == FAILED:
        await session.refresh(same, with_for_update=True)  # one retry, not one per request
    if same is not None and same.status != FAILED:
        staged.path.unlink(missing_ok=True)
        return Created(same, created=False)
    settings = (
        None
        if chunking is None
        else {
            "chunk_size": chunking.chunk_size,
            "chunk_overlap": chunking.chunk_overlap,
        }
    )
    # The same bytes after a failure (a quota, a provider outage, attempts used up) are the
    # owner's retry: a new revision of that document, ingested by a new job.
    document: Document | None = same
    if document is None and filename is not None:
        document = await repository.find_by_name(session, owner, collection, filename, lock=True)
    if document is not None:
        document.revision += 1
        document.content_type, document.size_bytes = content_type, staged.size
        document.sha256 = staged.sha256
        if metadata is not None:
            set_metadata(document, metadata)
        document.chunking, document.status, document.error = settings, QUEUED, None
    else:
        document = Document(
            owner_id=owner,
            collection=collection,
            filename=filename,
            content_type=content_type,
            size_bytes=staged.size,
            sha256=staged.sha256,
            meta=metadata or {},
            chunking=settings,
            status=QUEUED,
            revision=1,
            chunk_count=0,
        )
        try:
            async with session.begin_nested():
                session.add(document)
                await session.flush()
        except IntegrityError:  # the same name arrived at the same moment: make a revision
            return await create(
                session, store, job_settings, principal, staged,
                filename=filename, collection=collection, metadata=metadata, chunking=chunking,
            )  # fmt: skip
    job = await jobs.enqueue(
        session,
        job_settings,
        INGEST,
        {"document_id": str(document.id), "revision": document.revision},
        owner_id=owner,
    )
    document.job_id = job.id
    await session.flush()
    await asyncio.to_thread(store.keep, staged, document.id, document.revision)
    return Created(document, created=True)


async def get(session: AsyncSession, principal: Principal, document_id: uuid.UUID) -> Document:
    document = await repository.get_readable(session, principal, document_id)
    if document is None:
        raise NotFound("No such document.")
    return document


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7396): an object's keys are
    set, or removed where the patch gives null, recursively; anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


async def update_metadata(
    session: AsyncSession,
    principal: Principal,
    document_id: uuid.UUID,
    patch: dict[str, Any] | None,
) -> Document:
    """The document's metadata merged with ``patch`` (``merge_patch``; None: emptied). Search,
    filters and titles read it at once (the write moves the owner's corpus stamp, so cached
    answers are not served); no revision or ingestion is made."""
    document = await repository.get_readable(session, principal, document_id, lock=True)
    if document is None:
        raise NotFound("No such document.")
    merged = {} if patch is None else merge_patch(document.meta, patch)
    if problem := metadata_problem(merged):
        raise UnprocessableContent(f"The merged metadata {problem}.")
    if set_metadata(document, merged):
        await session.flush()
    return document


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def set_metadata(document: Document, value: dict[str, Any]) -> bool:
    """Sets the document's metadata where it differs as JSON; whether it did. Not compared
    with ``==``, where 1 == 1.0 == True: changing ``1`` to ``true`` was a no-op (the flush
    compares with ``==`` too, hence ``flag_modified``)."""
    if _as_json(value) == _as_json(document.meta):
        return False
    document.meta = value
    flag_modified(document, "meta")
    return True


async def delete(session: AsyncSession, principal: Principal, document_id: uuid.UUID) -> None:
    """Removes the document and its chunks (by cascade); the caller removes the files once
    this has committed. A job still running for it finds it gone and stops writing."""
    document = await repository.get_readable(session, principal, document_id, lock=True)
    if document is None:
        raise NotFound("No such document.")
    await session.delete(document)
    await session.flush()
