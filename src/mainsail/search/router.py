"""``POST /search`` over the caller's own documents."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mainsail.core.deps import SettingsDep
from mainsail.core.errors import UnprocessableContent
from mainsail.core.principal import Scope
from mainsail.identity.deps import CurrentPrincipal, require_scope
from mainsail.llm.gateway import CallContext
from mainsail.search.schemas import SearchIn, SearchOut
from mainsail.search.service import Searcher

router = APIRouter(tags=["search"])
Readable = require_scope(Scope.DOCUMENTS_READ)


def _field_error(field: str, message: str) -> UnprocessableContent:
    return UnprocessableContent(
        message,
        extra={
            "errors": [
                {"field": field, "loc": ["body", field], "message": message, "type": "value_error"}
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
    searcher: Searcher = request.app.state.search
    ctx = CallContext.of(
        principal, request_id=getattr(request.state, "request_id", None), kind="search"
    )
    result = await searcher.search(principal.user_id, body, ctx=ctx)
    if result.cached:
        response.headers["Mainsail-Cache"] = "hit"
    return result
