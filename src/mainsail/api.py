"""The flat list of routers mounted on the app."""

from __future__ import annotations

from fastapi import APIRouter

from mainsail.health.router import router as health_router

ROUTERS: list[APIRouter] = [health_router]
