"""FastAPI dependencies shared by every domain: settings, database session.

Dependencies are ``async def`` even when they do nothing asynchronous: FastAPI runs a plain
``def`` dependency in a worker thread, a hop that costs more than the work itself here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.db import Database
from mainsail.core.errors import UnsupportedMediaType
from mainsail.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed before the response is sent, or rolled back."""
    db: Database = request.app.state.db
    async with db.unit_of_work() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": the commit happens before the response leaves, so a failed commit is
# reported to the caller instead of being lost after a 200.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def require_json_body(request: Request) -> None:
    """415 for a request body that is not JSON (FastAPI would otherwise call it a bad dict)."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    has_body = request.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in request.headers
    )
    if not has_body:
        return
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    maintype, _, subtype = media_type.partition("/")
    if maintype == "application" and (subtype == "json" or subtype.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"Expected a JSON body (Content-Type: application/json), got {media_type or 'none'}"
    )


JsonBody = Depends(require_json_body)
