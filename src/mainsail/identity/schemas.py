"""Request and response bodies of the identity API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

from mainsail.core.principal import Role, Scope
from mainsail.core.schemas import OutModel, StrictModel
from mainsail.identity.emails import MAX_EMAIL_LENGTH, normalize_email

Email = Annotated[
    str, StringConstraints(max_length=MAX_EMAIL_LENGTH + 2), AfterValidator(normalize_email)
]
# The policy's lower bound comes from settings (checked in the service); this caps the work
# Argon2 can be made to do on one request.
Password = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class LoginIn(StrictModel):
    email: Email
    password: Password


class RefreshIn(StrictModel):
    refresh_token: OpaqueToken


class LogoutIn(StrictModel):
    all_sessions: bool = False


class TokenPair(StrictModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class UserOut(OutModel):
    id: uuid.UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime
    updated_at: datetime


class MeUpdate(StrictModel):
    current_password: Password
    email: Email | None = None
    password: Password | None = None


class UserCreate(StrictModel):
    email: Email
    password: Password
    role: Role = Role.USER


class UserAdminUpdate(StrictModel):
    role: Role | None = None
    disabled: bool | None = None


def _in_utc(value: datetime) -> datetime:
    """In UTC, as it is stored and compared. 9999-12-31T23:59:59-14:00 is a valid aware
    datetime, but in UTC it falls in year 10000, which no datetime can hold (a 422, not a
    500 where it is first converted)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("in UTC, must fall within the years 1 to 9999") from None


class ApiKeyCreate(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(Scope))] | None = None
    expires_at: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = Field(
        default=None, description="With a timezone, e.g. 2030-01-01T00:00:00Z"
    )


class ApiKeyOut(OutModel):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret. Shown once; store it now.")
