"""All identity SQL. Functions take the session first and keyword arguments after."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mainsail.core.ownership import readable_by
from mainsail.core.principal import Principal
from mainsail.identity.models import ApiKey, AuthSession, RefreshToken, User

# An arbitrary constant naming the advisory lock that serialises admin role changes.
_ADMIN_CHANGES_LOCK = 0x6D61696E7361696C  # "mainsail"


class EmailTaken(Exception):
    pass


# --- users --------------------------------------------------------------------------------


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    user: User | None = await session.scalar(select(User).where(User.email == email))
    return user


async def add_user(session: AsyncSession, *, email: str, password_hash: str, role: str) -> User:
    user = User(email=email, password_hash=password_hash, role=role)
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise EmailTaken(email) from None
    return user


async def change_email(session: AsyncSession, user: User, email: str) -> None:
    """The unique index decides, so two users racing for one address get one 409, no 500."""
    user.email = email
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise EmailTaken(email) from None


async def list_users(session: AsyncSession, *, limit: int, offset: int) -> tuple[list[User], int]:
    total = await session.scalar(select(func.count()).select_from(User)) or 0
    rows = await session.scalars(
        select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    )
    return list(rows), total


async def serialize_admin_changes(session: AsyncSession) -> None:
    """Hold a transaction-scoped lock so concurrent role changes see each other's result."""
    await session.execute(select(func.pg_advisory_xact_lock(_ADMIN_CHANGES_LOCK)))


async def count_active_admins(session: AsyncSession) -> int:
    statement = select(func.count()).where(User.role == "admin", User.disabled.is_(False))
    return await session.scalar(statement) or 0


# --- sessions and refresh tokens ----------------------------------------------------------


async def add_auth_session(
    session: AsyncSession, *, user_id: uuid.UUID, expires_at: datetime
) -> AuthSession:
    auth_session = AuthSession(user_id=user_id, expires_at=expires_at)
    session.add(auth_session)
    await session.flush()
    return auth_session


async def get_auth_session_with_user(
    session: AsyncSession, session_id: uuid.UUID
) -> tuple[AuthSession, User] | None:
    row = (
        await session.execute(
            select(AuthSession, User)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.id == session_id)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def revoke_auth_session(
    session: AsyncSession, session_id: uuid.UUID, *, reason: str, now: datetime
) -> None:
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )


async def revoke_user_sessions(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    reason: str,
    now: datetime,
    keep: uuid.UUID | None = None,
) -> None:
    statement = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep is not None:
        statement = statement.where(AuthSession.id != keep)
    await session.execute(statement.values(revoked_at=now, revoked_reason=reason))


async def add_refresh_token(
    session: AsyncSession, *, session_id: uuid.UUID, token_hash: str, expires_at: datetime
) -> None:
    session.add(RefreshToken(session_id=session_id, token_hash=token_hash, expires_at=expires_at))
    await session.flush()


async def spend_refresh_token(
    session: AsyncSession, token_hash: str, *, now: datetime
) -> RefreshToken | None:
    """Mark an unused token used, atomically: of two concurrent spends, one gets None."""
    spent: RefreshToken | None = await session.scalar(
        update(RefreshToken)
        .where(RefreshToken.token_hash == token_hash, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .returning(RefreshToken)
    )
    return spent


async def find_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    token: RefreshToken | None = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    )
    return token


# --- API keys -----------------------------------------------------------------------------


async def add_api_key(session: AsyncSession, key: ApiKey) -> ApiKey:
    session.add(key)
    await session.flush()
    return key


async def count_active_api_keys(session: AsyncSession, owner_id: uuid.UUID, now: datetime) -> int:
    """Keys that still authenticate: neither revoked nor expired at ``now``."""
    statement = select(func.count()).where(
        ApiKey.owner_id == owner_id,
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )
    return await session.scalar(statement) or 0


async def list_own_api_keys(session: AsyncSession, owner_id: uuid.UUID) -> list[ApiKey]:
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.owner_id == owner_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(rows)


async def get_readable_api_key(
    session: AsyncSession, principal: Principal, key_id: uuid.UUID
) -> ApiKey | None:
    key: ApiKey | None = await session.scalar(
        readable_by(principal, ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    )
    return key


async def find_api_key_with_owner(session: AsyncSession, prefix: str) -> tuple[ApiKey, User] | None:
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.owner_id)
            .where(ApiKey.prefix == prefix)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def touch_api_key(
    session: AsyncSession, key_id: uuid.UUID, *, now: datetime, interval_s: int
) -> None:
    """Record use, at most once per interval: a hot key must not write on every request."""
    stale_before = now - timedelta(seconds=interval_s)
    # SKIP LOCKED: if another request holds the row (it is touching it too), skip rather than
    # wait for that request's whole transaction, which may be a long model call.
    stale = (
        select(ApiKey.id)
        .where(
            ApiKey.id == key_id,
            (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < stale_before),
        )
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    await session.execute(update(ApiKey).where(ApiKey.id == stale).values(last_used_at=now))
