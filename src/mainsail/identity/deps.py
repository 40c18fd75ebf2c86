"""Who is calling, as FastAPI dependencies: routes declare what they need and get a Principal."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from mainsail.core.db import Database
from mainsail.core.principal import Principal, Scope
from mainsail.identity import service
from mainsail.identity.service import (
    IdentityKit,
    InsufficientScope,
    InvalidCredentials,
    NotAuthenticated,
)
from mainsail.identity.tokens import API_KEY_PREFIX


async def get_identity(request: Request) -> IdentityKit:
    kit: IdentityKit = request.app.state.identity
    return kit


IdentityDep = Annotated[IdentityKit, Depends(get_identity)]


def presented_credentials(request: HTTPConnection) -> tuple[str, str] | None:
    """("api_key" | "jwt", value) from ``Authorization: Bearer`` or ``X-API-Key``."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise InvalidCredentials("The Authorization header must be 'Bearer <token>'.")
        return credential_kind(value)
    key = request.headers.get("x-api-key", "").strip()
    return ("api_key", key) if key else None


def credential_kind(value: str) -> tuple[str, str]:
    return ("api_key" if value.startswith(API_KEY_PREFIX) else "jwt", value)


async def get_principal(request: Request, kit: IdentityDep) -> Principal:
    """Authenticates in a short transaction of its own, committed and returned to the pool
    before the endpoint runs: a route that then waits a minute on a model must not hold a
    database connection for the caller's identity all that time."""
    presented = presented_credentials(request)
    if presented is None:
        raise NotAuthenticated()
    return await authenticate(request, kit, presented)


async def authenticate(
    connection: HTTPConnection, kit: IdentityKit, presented: tuple[str, str]
) -> Principal:
    """The principal behind a credential; works for HTTP requests and WebSockets alike.
    Resolved once per HTTP request: the middleware that counts or replays per caller and the
    route share one lookup. A WebSocket lives for hours, so it is checked again every time."""
    if (
        connection.scope["type"] == "http"
        and getattr(connection.state, "credential", None) == presented
    ):
        resolved: Principal = connection.state.principal
        return resolved
    kind, value = presented
    db: Database = connection.app.state.db
    # From the principal cache, or else one round trip per statement (no BEGIN/COMMIT): the
    # lookup reads one row, and the occasional last-used touch stands alone.
    if kind == "api_key":
        principal = await service.resolve_api_key(db.autocommit_session, kit, value)
    else:
        principal = await service.resolve_access_token(db.autocommit_session, kit, value)
    connection.state.principal = principal
    connection.state.credential = presented
    structlog.contextvars.bind_contextvars(user_id=str(principal.user_id), auth=principal.via)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def require_session(principal: CurrentPrincipal) -> Principal:
    """Account management needs a signed-in person, not an API key (a leaked key must not
    be able to mint more keys or change the password)."""
    if principal.via != "session":
        raise InsufficientScope("Sign in with your password for this; API keys cannot do it.")
    return principal


async def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise InsufficientScope(
            "This needs an admin account (and, with an API key, the admin scope).", scope="admin"
        )
    return principal


async def require_admin_session(
    principal: Annotated[Principal, Depends(require_session)],
) -> Principal:
    """Changing accounts (creating admins, say) needs a signed-in admin: a leaked admin key
    must not be able to mint an admin account with a password its holder knows."""
    return await require_admin(principal)


SessionPrincipal = Annotated[Principal, Depends(require_session)]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
AdminSessionPrincipal = Annotated[Principal, Depends(require_admin_session)]


def ensure_scope(principal: Principal, scope: Scope) -> Principal:
    """The principal, if it holds ``scope``; 403 ``insufficient_scope`` otherwise."""
    if not principal.has_scope(scope):
        raise InsufficientScope(f"This needs the {scope.value} scope.", scope=scope.value)
    return principal


def require_scope(scope: Scope) -> Any:
    """``Depends`` for routes that need one scope, e.g. ``require_scope(Scope.CHAT)``."""

    async def check(principal: CurrentPrincipal) -> Principal:
        return ensure_scope(principal, scope)

    return Depends(check)


def anonymous_unless(area: str) -> Any:
    """``Depends`` that lets anonymous callers in when settings open ``area`` to them, and
    otherwise requires a principal. An open area touches no dependency (not even the DB)."""

    async def check(request: Request) -> Principal | None:
        if area in request.app.state.settings.anonymous_read:
            return None
        return await get_principal(request, request.app.state.identity)

    dependency: Callable[[Request], Coroutine[Any, Any, Principal | None]] = check
    return Depends(dependency)
