"""Who is calling: the resolved principal every service receives."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class Scope(StrEnum):
    """What an API key may do. Sessions (JWT) carry every scope their role allows."""

    CHAT = "chat"
    ANALYZE = "analyze"
    DOCUMENTS_READ = "documents:read"
    DOCUMENTS_WRITE = "documents:write"
    ADMIN = "admin"


USER_SCOPES = frozenset(scope for scope in Scope if scope is not Scope.ADMIN)
ALL_SCOPES = frozenset(Scope)


def scopes_for_role(role: Role) -> frozenset[Scope]:
    return ALL_SCOPES if role is Role.ADMIN else USER_SCOPES


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    email: str
    role: Role
    scopes: frozenset[Scope]
    via: Literal["session", "api_key"]
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        """An admin acting with admin powers (an admin's key needs the admin scope too)."""
        return self.role is Role.ADMIN and Scope.ADMIN in self.scopes

    def has_scope(self, scope: Scope) -> bool:
        return scope in self.scopes
