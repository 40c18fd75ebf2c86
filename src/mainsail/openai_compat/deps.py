"""The gateway and the call context as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mainsail.core.principal import Principal
from mainsail.llm.gateway import CallContext, Gateway


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def call_context(request: Request, principal: Principal, *, kind: str) -> CallContext:
    return CallContext.of(
        principal, request_id=getattr(request.state, "request_id", None), kind=kind
    )
