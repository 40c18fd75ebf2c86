"""The gateway and the call context as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mainsail.core.principal import Principal
from mainsail.llm.cache import cache_mode
from mainsail.llm.gateway import CallContext, Gateway


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def call_context(request: Request, principal: Principal, *, kind: str) -> CallContext:
    """The call's context; the caller's ``Cache-Control`` decides the response cache."""
    return CallContext.of(
        principal,
        request_id=getattr(request.state, "request_id", None),
        kind=kind,
        cache=cache_mode(request.headers.get("cache-control")),
    )
