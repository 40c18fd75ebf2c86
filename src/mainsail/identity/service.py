"""Identity rules: sign-in, token rotation, API keys, resolving the caller, user administration.

Services never commit: the request (or CLI command) that calls them owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.db import utcnow
from mainsail.core.errors import Conflict, Forbidden, NotFound, Unauthorized, UnprocessableContent
from mainsail.core.pagination import Page, PageParams
from mainsail.core.principal import Principal, Role, Scope, scopes_for_role
from mainsail.identity import repository as repo
from mainsail.identity.cache import PrincipalCache
from mainsail.identity.models import ApiKey, AuthSession, User
from mainsail.identity.passwords import Passwords
from mainsail.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    MeUpdate,
    TokenPair,
    UserAdminUpdate,
    UserOut,
)
from mainsail.identity.throttle import LoginThrottle
from mainsail.identity.tokens import (
    InvalidToken,
    TokenCodec,
    api_key_prefix,
    digests_match,
    new_api_key,
    new_refresh_token,
    sha256_hex,
)
from mainsail.settings import AuthSettings

MAX_ACTIVE_API_KEYS = 100
# Compared against when a presented key's prefix matches nothing, so both paths do the same work.
_DECOY_KEY_HASH = sha256_hex("msk_decoy")


# --- errors -------------------------------------------------------------------------------


def _challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    value = 'Bearer realm="mainsail"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return {"WWW-Authenticate": value}


class NotAuthenticated(Unauthorized):
    code = "not_authenticated"

    def __init__(self) -> None:
        super().__init__(
            "Send a bearer token or an API key (Authorization: Bearer ..., or X-API-Key).",
            headers=_challenge(),
        )


class InvalidCredentials(Unauthorized):
    code, title = "invalid_credentials", "Invalid credentials"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers=_challenge("invalid_token", detail))


class RefreshTokenReused(InvalidCredentials):
    """A spent refresh token came back: its whole family is revoked, and that must stick."""

    code = "refresh_token_reused"
    commit = True


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, detail: str, *, scope: str | None = None) -> None:
        headers = {
            "WWW-Authenticate": 'Bearer realm="mainsail", error="insufficient_scope"'
            + (f', scope="{scope}"' if scope else "")
        }
        super().__init__(detail, headers=headers)


class InvalidField(UnprocessableContent):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(
            f"{field_name}: {message}",
            extra={
                "errors": [
                    {
                        "field": f"body.{field_name}",
                        "loc": ["body", field_name],
                        "message": message,
                        "type": "value_error",
                    }
                ]
            },
        )


# --- collaborators ------------------------------------------------------------------------


@dataclass
class IdentityKit:
    """What the identity rules need besides a database session."""

    settings: AuthSettings
    passwords: Passwords
    codec: TokenCodec
    throttle: LoginThrottle
    clock: Callable[[], datetime] = field(default=utcnow)
    # Off until a listener feeds it invalidations (see identity.cache).
    principals: PrincipalCache = field(default_factory=lambda: PrincipalCache(ttl_s=0))


def check_password_policy(settings: AuthSettings, password: str, field_name: str) -> None:
    if len(password) < settings.password_min_length:
        raise InvalidField(
            field_name, f"must be at least {settings.password_min_length} characters"
        )
    if len(password) > settings.password_max_length:
        raise InvalidField(field_name, f"must be at most {settings.password_max_length} characters")


# --- sign-in and sessions -----------------------------------------------------------------


async def login(
    session: AsyncSession, kit: IdentityKit, *, email: str, password: str, client_ip: str
) -> TokenPair:
    """Same answer, after the same work, for an unknown email, a wrong password or a
    disabled account."""
    await kit.throttle.attempt(email=email, ip=client_ip)
    user = await repo.get_user_by_email(session, email)
    matches, rehashed = await kit.passwords.verify_and_update(
        password, user.password_hash if user else None
    )
    if user is None or not matches or user.disabled:
        raise InvalidCredentials("Invalid email or password.")
    await kit.throttle.succeeded(email=email)
    if rehashed is not None:  # the Argon2 costs were raised since this hash was made
        user.password_hash = rehashed
    return await _open_session(session, kit, user)


async def _open_session(session: AsyncSession, kit: IdentityKit, user: User) -> TokenPair:
    now = kit.clock()
    auth_session = await repo.add_auth_session(
        session,
        user_id=user.id,
        expires_at=now + timedelta(seconds=kit.settings.session_max_age_s),
    )
    return await _issue_pair(session, kit, user=user, auth_session=auth_session, now=now)


async def _issue_pair(
    session: AsyncSession,
    kit: IdentityKit,
    *,
    user: User,
    auth_session: AuthSession,
    now: datetime,
) -> TokenPair:
    """A new access token and a new refresh token in ``auth_session``'s family."""
    refresh_token = new_refresh_token()
    refresh_expires_at = min(
        now + timedelta(seconds=kit.settings.refresh_token_ttl_s), auth_session.expires_at
    )
    await repo.add_refresh_token(
        session,
        session_id=auth_session.id,
        token_hash=sha256_hex(refresh_token),
        expires_at=refresh_expires_at,
    )
    access_token = kit.codec.issue(
        user_id=user.id, session_id=auth_session.id, role=Role(user.role), now=now
    )
    return TokenPair(
        access_token=access_token,
        expires_in=kit.settings.access_token_ttl_s,
        refresh_token=refresh_token,
        refresh_expires_in=max(0, int((refresh_expires_at - now).total_seconds())),
    )


async def refresh(session: AsyncSession, kit: IdentityKit, *, refresh_token: str) -> TokenPair:
    """Rotate: the presented token is spent and a new one issued in the same family.

    Presenting a spent token again means it leaked (or a client misbehaves): the family is
    revoked, so neither the thief nor the owner can go on with it.
    """
    now = kit.clock()
    token_hash = sha256_hex(refresh_token)
    spent = await repo.spend_refresh_token(session, token_hash, now=now)
    if spent is None:
        known = await repo.find_refresh_token(session, token_hash)
        if known is not None and known.used_at is not None:
            await repo.revoke_auth_session(
                session, known.session_id, reason="refresh_token_reuse", now=now
            )
            kit.principals.forget(session_cache_key(known.session_id))
            raise RefreshTokenReused(
                "This refresh token was already used; the session has been revoked."
            )
        raise InvalidCredentials("The refresh token is not valid.")
    found = await repo.get_auth_session_with_user(session, spent.session_id)
    if found is None or spent.expires_at <= now:
        raise InvalidCredentials("The refresh token has expired.")
    auth_session, user = found
    if auth_session.revoked_at is not None or auth_session.expires_at <= now or user.disabled:
        raise InvalidCredentials("The session has ended; sign in again.")
    return await _issue_pair(session, kit, user=user, auth_session=auth_session, now=now)


async def logout(
    session: AsyncSession, kit: IdentityKit, principal: Principal, *, all_sessions: bool
) -> None:
    if principal.session_id is None:
        raise InsufficientScope("Sign-out ends a session; to revoke an API key, delete it.")
    now = kit.clock()
    if all_sessions:
        await repo.revoke_user_sessions(session, principal.user_id, reason="logout_all", now=now)
    else:
        await repo.revoke_auth_session(session, principal.session_id, reason="logout", now=now)
    kit.principals.invalidate_user(principal.user_id)


# --- resolving the caller -----------------------------------------------------------------


def session_cache_key(session_id: uuid.UUID) -> str:
    return f"s:{session_id}"


def api_key_cache_key(presented: str) -> str:
    return "k:" + sha256_hex(presented)


async def resolve_access_token(
    open_session: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    kit: IdentityKit,
    token: str,
) -> Principal:
    """The caller behind a session token. The signature and expiry are checked every time;
    the session row is read from the database, or from the principal cache."""
    claims = _verify_access_token(kit, token)
    cache = kit.principals
    key = session_cache_key(claims.session_id)
    entry = cache.get(key)
    if entry is not None and entry.principal.user_id == claims.user_id:
        return entry.principal
    generation = cache.generation
    async with open_session() as session:
        principal, valid_for = await _session_principal(
            session, kit, claims.session_id, claims.user_id
        )
    cache.put(key, principal, generation=generation, expires_in_s=valid_for)
    return principal


async def resolve_api_key(
    open_session: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    kit: IdentityKit,
    presented: str,
) -> Principal:
    """The caller behind an API key, from the principal cache when it is there (keyed by the
    key's SHA-256, so a hit is as exact as the database's comparison)."""
    cache = kit.principals
    key = api_key_cache_key(presented)
    entry = cache.get(key)
    interval = kit.settings.api_key_touch_interval_s
    if entry is not None:
        now = cache.clock()
        if entry.touch_due <= now and entry.principal.api_key_id is not None:
            entry.touch_due = now + interval  # at most one write per key and interval
            async with open_session() as session:
                await repo.touch_api_key(
                    session, entry.principal.api_key_id, now=kit.clock(), interval_s=interval
                )
        return entry.principal
    generation = cache.generation
    async with open_session() as session:
        principal, valid_for = await _api_key_principal(session, kit, presented)
    cache.put(key, principal, generation=generation, expires_in_s=valid_for, touch_in_s=interval)
    return principal


def _verify_access_token(kit: IdentityKit, token: str) -> Any:
    try:
        return kit.codec.verify(token)
    except InvalidToken as exc:
        raise InvalidCredentials(str(exc).capitalize() + ".") from None


async def _session_principal(
    session: AsyncSession, kit: IdentityKit, session_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Principal, float]:
    found = await repo.get_auth_session_with_user(session, session_id)
    now = kit.clock()
    if (
        found is None
        or found[0].revoked_at is not None
        or found[0].expires_at <= now
        or found[1].id != user_id
        or found[1].disabled
    ):
        raise InvalidCredentials("The session has ended; sign in again.")
    user = found[1]
    role = Role(user.role)  # the stored role, not the claim: a demotion takes effect at once
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=role,
        scopes=scopes_for_role(role),
        via="session",
        session_id=session_id,
    )
    return principal, (found[0].expires_at - now).total_seconds()


async def _api_key_principal(
    session: AsyncSession, kit: IdentityKit, presented: str
) -> tuple[Principal, float | None]:
    prefix = api_key_prefix(presented)
    found = await repo.find_api_key_with_owner(session, prefix) if prefix else None
    expected = found[0].secret_hash if found else _DECOY_KEY_HASH
    if not digests_match(sha256_hex(presented), expected) or found is None:
        raise InvalidCredentials("The API key is not valid.")
    key, user = found
    now = kit.clock()
    if key.revoked_at is not None:
        raise InvalidCredentials("The API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidCredentials("The API key has expired.")
    if user.disabled:
        raise InvalidCredentials("The API key's account is disabled.")
    role = Role(user.role)
    interval = timedelta(seconds=kit.settings.api_key_touch_interval_s)
    if key.last_used_at is None or key.last_used_at < now - interval:  # else skip the write
        await repo.touch_api_key(
            session, key.id, now=now, interval_s=kit.settings.api_key_touch_interval_s
        )
    principal = Principal(
        user_id=user.id,
        email=user.email,
        role=role,
        scopes=frozenset(Scope(s) for s in key.scopes) & scopes_for_role(role),
        via="api_key",
        api_key_id=key.id,
    )
    valid_for = None if key.expires_at is None else (key.expires_at - now).total_seconds()
    return principal, valid_for


# --- the caller's own account -------------------------------------------------------------


async def get_me(session: AsyncSession, principal: Principal) -> UserOut:
    user = await repo.get_user(session, principal.user_id)
    if user is None:  # deleted between authentication and now
        raise NotFound("User not found.")
    return UserOut.model_validate(user)


async def update_me(
    session: AsyncSession, kit: IdentityKit, principal: Principal, *, changes: MeUpdate
) -> UserOut:
    user = await repo.get_user(session, principal.user_id)
    if user is None:
        raise NotFound("User not found.")
    # Counted against this account only: one user's typos must not throttle anyone else.
    await kit.throttle.attempt(email=user.email, ip=None)
    if not await kit.passwords.verify(changes.current_password, user.password_hash):
        raise InvalidField("current_password", "does not match")
    await kit.throttle.succeeded(email=user.email)
    now = kit.clock()
    if changes.email is not None and changes.email != user.email:
        try:
            await repo.change_email(session, user, changes.email)
        except repo.EmailTaken:
            raise Conflict("That email address is already in use.") from None
    if changes.password is not None:
        check_password_policy(kit.settings, changes.password, "password")
        user.password_hash = await kit.passwords.hash(changes.password)
        user.password_changed_at = now
        # Anyone else holding this account's sessions is signed out; this session stays.
        await repo.revoke_user_sessions(
            session, user.id, reason="password_changed", now=now, keep=principal.session_id
        )
        kit.principals.invalidate_user(user.id)
    user.updated_at = now
    await session.flush()
    return UserOut.model_validate(user)


# --- API keys -----------------------------------------------------------------------------


async def create_api_key(
    session: AsyncSession, kit: IdentityKit, principal: Principal, *, request: ApiKeyCreate
) -> ApiKeyCreated:
    allowed = scopes_for_role(principal.role) & principal.scopes
    wanted = frozenset(request.scopes) if request.scopes is not None else allowed - {Scope.ADMIN}
    if not wanted <= allowed:
        missing = ", ".join(sorted(wanted - allowed))
        raise InsufficientScope(f"You cannot grant scopes you do not hold: {missing}.")
    now = kit.clock()
    if request.expires_at is not None and request.expires_at <= now:
        raise InvalidField("expires_at", "must be in the future")
    if await repo.count_active_api_keys(session, principal.user_id, now) >= MAX_ACTIVE_API_KEYS:
        raise Conflict(f"At most {MAX_ACTIVE_API_KEYS} active API keys per user.")
    minted = new_api_key()
    key = await repo.add_api_key(
        session,
        ApiKey(
            owner_id=principal.user_id,
            name=request.name,
            prefix=minted.prefix,
            secret_hash=minted.secret_hash,
            scopes=sorted(wanted),
            created_at=now,
            expires_at=request.expires_at,
        ),
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=minted.secret)


async def list_api_keys(session: AsyncSession, principal: Principal) -> list[ApiKeyOut]:
    keys = await repo.list_own_api_keys(session, principal.user_id)
    return [ApiKeyOut.model_validate(key) for key in keys]


async def get_api_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKeyOut:
    key = await repo.get_readable_api_key(session, principal, key_id)
    if key is None:
        raise NotFound("API key not found.")
    return ApiKeyOut.model_validate(key)


async def revoke_api_key(
    session: AsyncSession, kit: IdentityKit, principal: Principal, key_id: uuid.UUID
) -> None:
    key = await repo.get_readable_api_key(session, principal, key_id)
    if key is None:
        raise NotFound("API key not found.")
    key.revoked_at = kit.clock()
    await session.flush()
    kit.principals.invalidate_user(key.owner_id)


# --- administration -----------------------------------------------------------------------


async def create_user(
    session: AsyncSession,
    passwords: Passwords,
    settings: AuthSettings,
    *,
    email: str,
    password: str,
    role: Role,
) -> UserOut:
    check_password_policy(settings, password, "password")
    password_hash = await passwords.hash(password)
    try:
        user = await repo.add_user(session, email=email, password_hash=password_hash, role=role)
    except repo.EmailTaken:
        raise Conflict("A user with that email already exists.") from None
    return UserOut.model_validate(user)


async def set_password(
    session: AsyncSession,
    passwords: Passwords,
    settings: AuthSettings,
    user_id: uuid.UUID,
    *,
    password: str,
    now: datetime,
) -> UserOut:
    """An operator's reset: new password, and every session of the account ends."""
    user = await repo.get_user(session, user_id)
    if user is None:
        raise NotFound("User not found.")
    check_password_policy(settings, password, "password")
    user.password_hash = await passwords.hash(password)
    user.password_changed_at = user.updated_at = now
    await repo.revoke_user_sessions(session, user.id, reason="password_reset", now=now)
    await session.flush()
    return UserOut.model_validate(user)


async def list_users(session: AsyncSession, page: PageParams) -> Page[UserOut]:
    users, total = await repo.list_users(session, limit=page.limit, offset=page.offset)
    return Page[UserOut](
        items=[UserOut.model_validate(u) for u in users],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> UserOut:
    user = await repo.get_user(session, user_id)
    if user is None:
        raise NotFound("User not found.")
    return UserOut.model_validate(user)


async def find_user_by_email(session: AsyncSession, email: str) -> UserOut:
    user = await repo.get_user_by_email(session, email)
    if user is None:
        raise NotFound("User not found.")
    return UserOut.model_validate(user)


async def administer_user(
    session: AsyncSession, user_id: uuid.UUID, *, changes: UserAdminUpdate, now: datetime
) -> UserOut:
    await repo.serialize_admin_changes(session)  # two admins demoting each other: one waits
    user = await repo.get_user(session, user_id)
    if user is None:
        raise NotFound("User not found.")
    was_active_admin = user.role == Role.ADMIN and not user.disabled
    updates: dict[str, Any] = changes.model_dump(exclude_none=True)
    if "role" in updates:
        user.role = Role(updates["role"]).value
    if "disabled" in updates:
        user.disabled = updates["disabled"]
    still_active_admin = user.role == Role.ADMIN and not user.disabled
    # The count sees this change already (autoflush): zero means nobody would be left.
    if was_active_admin and not still_active_admin and await repo.count_active_admins(session) == 0:
        raise Conflict("This is the last active admin; promote another user first.")
    if user.disabled:
        await repo.revoke_user_sessions(session, user.id, reason="disabled", now=now)
    user.updated_at = now
    await session.flush()
    return UserOut.model_validate(user)
