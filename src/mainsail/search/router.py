"""``POST /search`` over the caller's own documents; index versions for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from mainsail.core.deps import SettingsDep
from mainsail.core.errors import Forbidden, UnprocessableContent
from mainsail.core.pagination import Page, PageParams
from mainsail.core.principal import Scope
from mainsail.identity.deps import AdminPrincipal, CurrentPrincipal, require_scope
from mainsail.llm.gateway import CallContext
from mainsail.search.indexing import IndexVersions
from mainsail.search.schemas import (
    MAX_VERSION_ID,
    ActivationOut,
    IndexVersionIn,
    IndexVersionOut,
    RetirementOut,
    SearchIn,
    SearchOut,
)
from mainsail.search.service import Searcher

# An index version's id: a PostgreSQL integer; a larger number is a 422, not a database error.
VersionId = Annotated[int, Path(ge=1, le=MAX_VERSION_ID)]

router = APIRouter(tags=["search"])
Readable = require_scope(Scope.DOCUMENTS_READ)


def _field_error(field: str, message: str) -> UnprocessableContent:
    return UnprocessableContent(
        message,
        extra={
            "errors": [
                {
                    "field": f"body.{field}",
                    "loc": ["body", field],
                    "message": message,
                    "type": "value_error",
                }
            ]
        },
    )


@router.post(
    "/search",
    summary="Search your documents: hybrid (default), vector or keyword",
    dependencies=[Readable],
    responses={422: {"description": "Empty or over-long query, top_k over the maximum"}},
)
async def search(
    body: SearchIn,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    settings: SettingsDep,
) -> SearchOut:
    limits = settings.search
    if len(body.query) > limits.max_query_chars:
        raise _field_error(
            "query", f"The query is longer than {limits.max_query_chars} characters."
        )
    if body.top_k > limits.max_top_k:
        raise _field_error("top_k", f"top_k may be at most {limits.max_top_k}.")
    if body.index_version is not None and not principal.is_admin:
        raise Forbidden("Only admins search an index version other than the active one.")
    searcher: Searcher = request.app.state.search
    ctx = CallContext.of(
        principal, request_id=getattr(request.state, "request_id", None), kind="search"
    )
    result = await searcher.search(principal.user_id, body, version_id=body.index_version, ctx=ctx)
    if result.cached:
        response.headers["Mainsail-Cache"] = "hit"
    return result


def _versions(request: Request) -> IndexVersions:
    versions: IndexVersions = request.app.state.index_versions
    return versions


@router.post(
    "/admin/index-versions",
    summary="Build a new index version (embedder, chunking) beside the active one",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"description": "Another version is being built"},
        422: {"description": "Unknown embedder, or chunking it cannot read"},
    },
)
async def create_index_version(
    body: IndexVersionIn, request: Request, _: AdminPrincipal
) -> IndexVersionOut:
    version = await _versions(request).create(body)
    return IndexVersionOut.model_validate(version)


@router.get("/admin/index-versions", summary="Index versions, newest first")
async def list_index_versions(
    request: Request, _: AdminPrincipal, page: Annotated[PageParams, Query()]
) -> Page[IndexVersionOut]:
    rows, total = await _versions(request).page(limit=page.limit, offset=page.offset)
    items = [IndexVersionOut.model_validate(row) for row in rows]
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/admin/index-versions/{version_id}",
    summary="One index version: state, build progress and errors, quality figures",
)
async def read_index_version(
    version_id: VersionId, request: Request, _: AdminPrincipal
) -> IndexVersionOut:
    return IndexVersionOut.model_validate(await _versions(request).get(version_id))


@router.post(
    "/admin/index-versions/{version_id}/activate",
    summary="Make a ready version the one search reads (one transaction)",
    responses={
        409: {
            "description": "Not ready; or, not forced: searchable documents missing from it "
            "(index_version_incomplete, with their ids), or worse than the active version on "
            "the evaluation set (quality_regression, with the figures)"
        }
    },
)
async def activate_index_version(
    version_id: VersionId,
    request: Request,
    _: AdminPrincipal,
    force: Annotated[
        bool, Query(description="Skip the quality gate and the check for missing documents")
    ] = False,
) -> ActivationOut:
    version, previous, quality = await _versions(request).activate(version_id, force=force)
    return ActivationOut(
        version=IndexVersionOut.model_validate(version), previous_id=previous, quality=quality
    )


@router.post(
    "/admin/index-versions/{version_id}/retire",
    summary="Stop serving and writing a version; its chunks and index are deleted by a job",
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The version is the active one"}},
)
async def retire_index_version(
    version_id: VersionId, request: Request, _: AdminPrincipal
) -> RetirementOut:
    version, job_id = await _versions(request).retire(version_id)
    return RetirementOut(version=IndexVersionOut.model_validate(version), purge_job_id=job_id)
