"""Every ORM table, gathered on one metadata for Alembic and the drift test.

Each domain's ``models`` module is imported here so that autogenerate and the
models-vs-migrations check see the whole schema.
"""

from __future__ import annotations

from mainsail.core.db import Base
from mainsail.identity import models as identity_models  # noqa: F401 - registers tables

metadata = Base.metadata

__all__ = ["metadata"]
