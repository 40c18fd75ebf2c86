"""The flat list of routers mounted on the app."""

from __future__ import annotations

from fastapi import APIRouter

from mainsail.apidocs.router import router as apidocs_router
from mainsail.health.router import router as health_router
from mainsail.identity.router import admin_router, auth_router, me_router

ROUTERS: list[APIRouter] = [
    health_router,
    apidocs_router,
    auth_router,
    me_router,
    admin_router,
]
