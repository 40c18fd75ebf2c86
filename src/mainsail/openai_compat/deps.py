"""The caller, the gateway and the call context of the /v1 surface as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mainsail.core.deps import require_json_body
from mainsail.core.principal import Principal, Scope
from mainsail.identity.deps import ensure_scope, get_principal
from mainsail.llm.cache import cache_mode
from mainsail.llm.gateway import CallContext, Gateway


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def v1_caller(request: Request) -> Principal:
    """A JSON body (415 otherwise), a credential (401) with the chat scope (403), in that
    order: what ``JsonBody``, ``require_scope(Scope.CHAT)`` and ``CurrentPrincipal`` check,
    as one dependency. FastAPI resolves each dependency with a fair amount of bookkeeping, and
    every /v1 call pays it; this is the gateway's hot path."""
    await require_json_body(request)
    principal = await get_principal(request, request.app.state.identity)
    return ensure_scope(principal, Scope.CHAT)


V1Caller = Annotated[Principal, Depends(v1_caller)]


def call_context(request: Request, principal: Principal, *, kind: str) -> CallContext:
    """The call's context; the caller's ``Cache-Control`` decides the response cache."""
    return CallContext.of(
        principal,
        request_id=getattr(request.state, "request_id", None),
        kind=kind,
        cache=cache_mode(request.headers.get("cache-control")),
    )
