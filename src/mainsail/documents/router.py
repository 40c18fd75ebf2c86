"""``/documents``: upload (multipart or inline text), list, read, delete."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status
from pydantic import ValidationError

from mainsail.core.deps import SessionDep, SettingsDep
from mainsail.core.errors import (
    UnprocessableContent,
    UnsupportedMediaType,
    describe_validation_errors,
)
from mainsail.core.pagination import Page, PageParams
from mainsail.core.principal import Scope
from mainsail.core.schemas import is_text
from mainsail.documents import repository, service
from mainsail.documents.chunking import default_overlap
from mainsail.documents.schemas import (
    MAX_FILENAME,
    ChunkingIn,
    DocumentOut,
    DocumentPatchIn,
    Status,
    TextDocumentIn,
)
from mainsail.documents.service import Chunking
from mainsail.documents.storage import DocumentStore
from mainsail.documents.upload import parse_json_field, read_multipart, stage_text
from mainsail.identity.deps import CurrentPrincipal, require_scope

router = APIRouter(prefix="/documents", tags=["documents"])
Readable = require_scope(Scope.DOCUMENTS_READ)
Writable = require_scope(Scope.DOCUMENTS_WRITE)


def _store(request: Request) -> DocumentStore:
    store: DocumentStore = request.app.state.documents.store
    return store


def _max_tokens(request: Request) -> int:
    return int(request.app.state.documents.max_tokens)


@router.post(
    "",
    summary="Upload a document (multipart `file`, or JSON with `text`); ingestion runs as a job",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Writable],
    responses={
        200: {"description": "The same bytes were already uploaded: that document"},
        413: {"description": "Over MAINSAIL_DOCUMENTS__MAX_UPLOAD_BYTES"},
        415: {"description": "Not a supported type (judged from the bytes)"},
    },
)
async def upload(
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> DocumentOut:
    store = _store(request)
    limit = settings.documents.max_upload_bytes
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        upload = await read_multipart(request, store, limit)
        try:
            fields = upload.fields
            chunking = _chunking(
                fields.get("chunk_size"),
                fields.get("chunk_overlap"),
                configured_overlap=settings.documents.chunk_overlap,
            )
            metadata = parse_json_field(fields.get("metadata"), "metadata")
            collection = _collection(
                fields.get("collection") or settings.documents.default_collection
            )
            filename = _filename(fields.get("filename") or upload.filename)
        except Exception:
            upload.staged.path.unlink(missing_ok=True)
            raise
        staged = upload.staged
    elif media_type == "application/json" or media_type.endswith("+json"):
        try:
            body = TextDocumentIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise UnprocessableContent(
                "Invalid document body.",
                extra={"errors": describe_validation_errors(exc.errors())},
            ) from None
        chunking = (
            _resolved(body.chunking, configured_overlap=settings.documents.chunk_overlap)
            if body.chunking
            else None
        )
        metadata, filename = body.metadata, _filename(body.filename)
        collection = body.collection or settings.documents.default_collection
        staged = stage_text(store, body.text, limit)
    else:
        raise UnsupportedMediaType(
            "Send multipart/form-data with a 'file' part, or JSON with 'text'."
        )
    try:
        service.check_chunking(chunking, max_tokens=_max_tokens(request))
        created = await service.create(
            session,
            store,
            settings.jobs,
            principal,
            staged,
            filename=filename,
            collection=collection,
            metadata=metadata,
            chunking=chunking,
        )
    except BaseException:
        staged.path.unlink(missing_ok=True)  # gone already once the store kept it
        raise
    if not created.created:
        response.status_code = status.HTTP_200_OK
    return DocumentOut.model_validate(created.document)


def _chunking(size: str | None, overlap: str | None, *, configured_overlap: int) -> Chunking | None:
    if not size and not overlap:
        return None
    try:
        parsed = ChunkingIn(
            chunk_size=_whole(size), chunk_overlap=_whole(overlap) if overlap else None
        )
    except (ValueError, ValidationError):
        raise UnprocessableContent(
            "chunk_size must be 16-8192 and chunk_overlap 0-4096 (whole numbers)."
        ) from None
    return _resolved(parsed, configured_overlap=configured_overlap)


def _resolved(chunking: ChunkingIn, *, configured_overlap: int) -> Chunking:
    """An upload's chunking; without an overlap, the default one, at most a quarter of the
    size (as for an index version's)."""
    overlap = chunking.chunk_overlap
    if overlap is None:
        overlap = default_overlap(configured_overlap, chunking.chunk_size)
    return Chunking(chunking.chunk_size, overlap)


def _whole(value: str | None) -> int:
    """A form field's whole number: ASCII digits only (``int`` also takes "6_4" and "٦٤")."""
    value = (value or "0").strip()
    if not (value.isascii() and value.isdigit()):
        raise ValueError(value)
    return int(value)


def _filename(value: str | None) -> str | None:
    """An upload's filename (the file part's, a ``filename`` field or the JSON body's), held
    to the JSON body's limits and in Unicode's composed form (NFC)."""
    if value is None:
        return None
    if not is_text(value):  # an RFC 2231 filename* is decoded with any codec it names
        raise UnprocessableContent("filename holds a lone surrogate, which is not a character.")
    # One name, however the client's file system spelled it (macOS decomposes accents), so a
    # changed file is a revision of the same document.
    value = unicodedata.normalize("NFC", value)
    if not 1 <= len(value) <= MAX_FILENAME:
        raise UnprocessableContent(f"filename must be 1-{MAX_FILENAME} characters long.")
    return value


def _collection(value: str) -> str:
    try:
        TextDocumentIn(text="x", collection=value)
    except ValidationError:
        raise UnprocessableContent(
            "collection must be 1-128 letters, digits, spaces or . _ - : (not spaces alone)"
        ) from None
    return value


@router.get("", summary="Your documents, newest first", dependencies=[Readable])
async def list_documents(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: Annotated[PageParams, Query()],
    collection: Annotated[str | None, Query(max_length=128)] = None,
    status: Annotated[Status | None, Query()] = None,
) -> Page[DocumentOut]:
    rows, total = await repository.list_readable(
        session,
        principal,
        collection=collection,
        status=status,
        limit=page.limit,
        offset=page.offset,
    )
    return Page(
        items=[DocumentOut.model_validate(row) for row in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get(
    "/{document_id}", summary="One document: status, chunk count, errors", dependencies=[Readable]
)
async def read_document(
    document_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> DocumentOut:
    return DocumentOut.model_validate(await service.get(session, principal, document_id))


@router.patch(
    "/{document_id}",
    summary="Change a document's metadata (a JSON merge patch); search reads it at once",
    dependencies=[Writable],
    responses={422: {"description": "Metadata JSON cannot hold, or over 65,536 bytes merged"}},
)
async def update_document(
    document_id: uuid.UUID,
    body: DocumentPatchIn,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> DocumentOut:
    if "metadata" not in body.model_fields_set:
        return DocumentOut.model_validate(await service.get(session, principal, document_id))
    document = await service.update_metadata(session, principal, document_id, body.metadata)
    return DocumentOut.model_validate(document)


@router.delete(
    "/{document_id}",
    summary="Delete a document, its chunks and its file",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Writable],
)
async def delete_document(
    document_id: uuid.UUID,
    request: Request,
    principal: CurrentPrincipal,
    session: SessionDep,
    background: BackgroundTasks,
) -> Response:
    await service.delete(session, principal, document_id)
    # Runs once the response is out, so after the commit: a failed delete keeps its file.
    background.add_task(_store(request).delete, document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
