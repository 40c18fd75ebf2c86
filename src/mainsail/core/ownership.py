"""Owner scoping as a mechanism: every user-owned table and every query over it goes through here.

A user-owned table mixes in ``OwnedMixin``. Repositories build their statements with
``readable_by(principal, Model)`` (or filter an existing select with ``owned_filter``), which
restricts rows to the principal's own unless the principal is an admin. A row the caller may not
read is indistinguishable from a missing one: both are ``None`` here and 404 at the edge.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import ForeignKey, Select, select
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from mainsail.core.principal import Principal


class OwnedMixin:
    @declared_attr
    def owner_id(cls) -> Mapped[uuid.UUID]:  # noqa: N805 - SQLAlchemy's declared_attr idiom
        return mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


OwnedT = TypeVar("OwnedT", bound=OwnedMixin)


def owned_filter(
    statement: Select[Any], model: type[OwnedMixin], principal: Principal
) -> Select[Any]:
    if principal.is_admin:
        return statement
    return statement.where(model.owner_id == principal.user_id)


def readable_by(principal: Principal, model: type[OwnedT]) -> Select[tuple[OwnedT]]:
    return owned_filter(select(model), model, principal)
