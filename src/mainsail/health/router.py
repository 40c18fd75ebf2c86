"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from mainsail.core.errors import problem_response
from mainsail.core.readiness import ReadinessRegistry
from mainsail.identity.deps import anonymous_unless

router = APIRouter(tags=["operations"])


async def get_readiness(request: Request) -> ReadinessRegistry:
    registry: ReadinessRegistry = request.app.state.readiness
    return registry


Readiness = Annotated[ReadinessRegistry, Depends(get_readiness)]


@router.get(
    "/health",
    summary="The process is alive (touches no dependency)",
    dependencies=[anonymous_unless("health")],
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Every dependency is usable",
    dependencies=[anonymous_unless("ready")],
    responses={503: {"description": "A dependency is failing; the body names it"}},
)
async def ready(request: Request, readiness: Readiness) -> Any:
    results = await readiness.run()
    checks = {result.name: result.as_dict() for result in results}
    failing = [result for result in results if not result.ok]
    if not failing:
        return JSONResponse({"status": "ready", "checks": checks})
    return problem_response(
        status=503,
        code="not_ready",
        title="Service not ready",
        detail="; ".join(f"{r.name}: {r.error}" for r in failing),
        request=request,
        headers={"Cache-Control": "no-store", "Retry-After": "5"},
        extra={"failing": [r.name for r in failing], "checks": checks},
    )
