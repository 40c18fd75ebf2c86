"""HTTP: sign-in (/auth), the caller's own account (/me), user administration (/admin/users)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from mainsail.core.deps import JsonBody, SessionDep
from mainsail.core.pagination import Page, PageParams
from mainsail.core.ratelimit import request_client_address
from mainsail.identity import service
from mainsail.identity.deps import (
    AdminPrincipal,
    AdminSessionPrincipal,
    CurrentPrincipal,
    IdentityDep,
    SessionPrincipal,
)
from mainsail.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginIn,
    LogoutIn,
    MeUpdate,
    RefreshIn,
    TokenPair,
    UserAdminUpdate,
    UserCreate,
    UserOut,
)
from mainsail.settings import Settings

auth_router = APIRouter(prefix="/auth", tags=["auth"], dependencies=[JsonBody])
me_router = APIRouter(prefix="/me", tags=["me"], dependencies=[JsonBody])
admin_router = APIRouter(prefix="/admin/users", tags=["admin"], dependencies=[JsonBody])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def client_ip(request: Request) -> str:
    """The address sign-in attempts are counted by: the one the rate limiter counts (the
    forwarded client behind trusted proxies, an IPv6 client's /64)."""
    settings: Settings = request.app.state.settings
    return request_client_address(request.scope, hops=settings.rate_limit.forwarded_for_hops)


@auth_router.post("/login", summary="Sign in with email and password")
async def login(
    body: LoginIn, request: Request, response: Response, session: SessionDep, kit: IdentityDep
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await service.login(
        session, kit, email=body.email, password=body.password, client_ip=client_ip(request)
    )


@auth_router.post("/refresh", summary="Trade a refresh token for a new pair (single use)")
async def refresh(
    body: RefreshIn, response: Response, session: SessionDep, kit: IdentityDep
) -> TokenPair:
    response.headers.update(_NO_STORE)
    return await service.refresh(session, kit, refresh_token=body.refresh_token)


@auth_router.post(
    "/logout", status_code=status.HTTP_204_NO_CONTENT, summary="End this session (or all)"
)
async def logout(
    principal: CurrentPrincipal,
    session: SessionDep,
    kit: IdentityDep,
    body: LogoutIn | None = None,
) -> None:
    await service.logout(session, kit, principal, all_sessions=body.all_sessions if body else False)


@me_router.get("", summary="The signed-in user")
async def read_me(principal: CurrentPrincipal, session: SessionDep) -> UserOut:
    return await service.get_me(session, principal)


@me_router.patch("", summary="Change email or password (needs the current password)")
async def update_me(
    body: MeUpdate, principal: SessionPrincipal, session: SessionDep, kit: IdentityDep
) -> UserOut:
    return await service.update_me(session, kit, principal, changes=body)


@me_router.post(
    "/api-keys", status_code=status.HTTP_201_CREATED, summary="Create an API key (shown once)"
)
async def create_api_key(
    body: ApiKeyCreate,
    principal: SessionPrincipal,
    session: SessionDep,
    kit: IdentityDep,
    response: Response,
) -> ApiKeyCreated:
    response.headers.update(_NO_STORE)
    return await service.create_api_key(session, kit, principal, request=body)


@me_router.get("/api-keys", summary="Your active API keys (no secrets)")
async def list_api_keys(principal: CurrentPrincipal, session: SessionDep) -> list[ApiKeyOut]:
    return await service.list_api_keys(session, principal)


@me_router.get("/api-keys/{key_id}", summary="One of your API keys")
async def read_api_key(
    key_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ApiKeyOut:
    return await service.get_api_key(session, principal, key_id)


@me_router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an API key (effective on the next request)",
)
async def revoke_api_key(
    key_id: uuid.UUID, principal: SessionPrincipal, session: SessionDep, kit: IdentityDep
) -> None:
    await service.revoke_api_key(session, kit, principal, key_id)


@admin_router.get("", summary="All users, oldest first")
async def list_users(
    _: AdminPrincipal, session: SessionDep, page: Annotated[PageParams, Query()]
) -> Page[UserOut]:
    return await service.list_users(session, page)


@admin_router.post("", status_code=status.HTTP_201_CREATED, summary="Create a user")
async def create_user(
    body: UserCreate, _: AdminSessionPrincipal, session: SessionDep, kit: IdentityDep
) -> UserOut:
    return await service.create_user(
        session,
        kit.passwords,
        kit.settings,
        email=body.email,
        password=body.password,
        role=body.role,
    )


@admin_router.get("/{user_id}", summary="One user")
async def read_user(user_id: uuid.UUID, _: AdminPrincipal, session: SessionDep) -> UserOut:
    return await service.get_user(session, user_id)


@admin_router.patch("/{user_id}", summary="Change a user's role or disable them")
async def administer_user(
    user_id: uuid.UUID,
    body: UserAdminUpdate,
    _: AdminSessionPrincipal,
    session: SessionDep,
    kit: IdentityDep,
) -> UserOut:
    changed = await service.administer_user(session, user_id, changes=body, now=kit.clock())
    # Other processes learn it from the trigger, which also has every process give back the
    # user's budget leases (a new role's default budget may be lower).
    kit.principals.invalidate_user(user_id)
    return changed
