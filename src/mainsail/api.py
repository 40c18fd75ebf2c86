"""The flat list of routers mounted on the app."""

from __future__ import annotations

from fastapi import APIRouter

from mainsail.analysis.router import router as analysis_router
from mainsail.apidocs.router import router as apidocs_router
from mainsail.chat.router import router as chat_router
from mainsail.documents.router import router as documents_router
from mainsail.health.router import router as health_router
from mainsail.identity.router import admin_router, auth_router, me_router
from mainsail.jobs.router import router as jobs_router
from mainsail.openai_compat.router import router as openai_router
from mainsail.openai_compat.websocket import router as openai_ws_router
from mainsail.quotas.router import router as quotas_router
from mainsail.search.router import router as search_router
from mainsail.usage.router import router as usage_router

# Routes are matched in this order, one after another: the OpenAI-compatible surface, the
# gateway's hot path, comes first so its requests are not compared with every other route.
ROUTERS: list[APIRouter] = [
    openai_router,
    openai_ws_router,
    health_router,
    apidocs_router,
    auth_router,
    me_router,
    usage_router,
    admin_router,
    quotas_router,
    analysis_router,
    documents_router,
    search_router,
    chat_router,
    jobs_router,
]
