"""``POST /analyze``: typed answers (sentiment, summary, classify, extract, custom schema)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from mainsail.analysis.schemas import AnalyzeRequest, AnalyzeResponse, AnalyzeUsage
from mainsail.analysis.service import analyze
from mainsail.core.deps import JsonBody, SettingsDep
from mainsail.core.principal import Scope
from mainsail.identity.deps import CurrentPrincipal, require_scope
from mainsail.llm.cache import cache_mode
from mainsail.llm.gateway import CallContext, Gateway

router = APIRouter(tags=["analysis"], dependencies=[JsonBody, require_scope(Scope.ANALYZE)])


@router.post(
    "/analyze",
    summary="Analyze text into a validated, typed result",
    response_model=AnalyzeResponse,
    responses={
        413: {"description": "Input over MAINSAIL_ANALYSIS__MAX_INPUT_CHARS"},
        422: {"description": "Unknown task, invalid options or an invalid custom schema"},
        502: {"description": "invalid_model_output: still invalid after the repair attempts"},
        503: {"description": "No language model configured"},
    },
)
async def analyze_text(
    body: AnalyzeRequest,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    settings: SettingsDep,
) -> AnalyzeResponse:
    gateway: Gateway = request.app.state.gateway
    request_id = getattr(request.state, "request_id", None)
    ctx = CallContext.of(
        principal,
        request_id=request_id,
        kind="analyze",
        cache=cache_mode(request.headers.get("cache-control")),
    )
    done = await analyze(
        gateway, settings.analysis, ctx, task=body.task, text=body.input, options=body.options
    )
    if done.cache_hit:
        response.headers["Mainsail-Cache"] = "hit"
    return AnalyzeResponse(
        task=done.task,
        prompt_version=done.prompt_version,
        model=done.model,
        result=done.result,
        usage=AnalyzeUsage(
            input_tokens=done.usage.input_tokens,
            output_tokens=done.usage.output_tokens,
            cost_usd=f"{done.cost:.8f}",
            attempts=done.attempts,
        ),
        request_id=request_id,
    )
