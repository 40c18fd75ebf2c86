"""Admins read and override a user's monthly budget."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Request
from pydantic import Field

from mainsail.core.db import utcnow
from mainsail.core.deps import JsonBody, SessionDep, SettingsDep
from mainsail.core.schemas import StrictModel
from mainsail.identity.deps import AdminPrincipal, AdminSessionPrincipal
from mainsail.quotas import service

router = APIRouter(prefix="/admin/users", tags=["admin"], dependencies=[JsonBody])


class QuotaUpdate(StrictModel):
    """null restores the role's default."""

    # quota_limits.monthly_tokens is a BIGINT: a larger value is a 422, not a database error.
    monthly_tokens: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    monthly_cost_usd: Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=10)] | None = (
        None
    )


@router.get("/{user_id}/quota", summary="A user's monthly budget and this month's use")
async def read_quota(
    user_id: uuid.UUID, _: AdminPrincipal, session: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    return await service.user_budget(session, settings.quota, user_id, now=utcnow())


@router.put("/{user_id}/quota", summary="Override a user's monthly budget")
async def override_quota(
    user_id: uuid.UUID,
    body: QuotaUpdate,
    _: AdminSessionPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    background: BackgroundTasks,
) -> dict[str, Any]:
    budget = await service.override_budget(
        session,
        settings.quota,
        user_id,
        monthly_tokens=body.monthly_tokens,
        monthly_cost_usd=body.monthly_cost_usd,
        now=utcnow(),
    )
    # What this process's leases hold was reserved under the old limit. Given back once the
    # response is out, so after the commit: a refill then sees the new limit.
    quota: service.DbQuota = request.app.state.quota
    background.add_task(quota.give_back_quietly, user_id)
    return budget
