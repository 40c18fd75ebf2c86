"""GET /me/usage: this month's use by day and model, and what remains of the budget."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from mainsail.core.db import utcnow
from mainsail.core.deps import SessionDep, SettingsDep
from mainsail.identity.deps import CurrentPrincipal
from mainsail.usage import service

router = APIRouter(prefix="/me", tags=["me"])


@router.get("/usage", summary="This month's usage by day and model, and the budget left")
async def read_usage(
    principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    return await service.usage_this_month(session, settings.quota, principal, now=utcnow())
