"""Every ORM table, gathered on one metadata for Alembic and the drift test.

Each domain's ``models`` module is imported here so that autogenerate and the
models-vs-migrations check see the whole schema.
"""

from __future__ import annotations

from mainsail.chat import models as chat_models  # noqa: F401
from mainsail.core.db import Base
from mainsail.documents import models as document_models  # noqa: F401
from mainsail.idempotency import models as idempotency_models  # noqa: F401
from mainsail.identity import models as identity_models  # noqa: F401 - registers tables
from mainsail.jobs import models as job_models  # noqa: F401
from mainsail.quotas import models as quota_models  # noqa: F401
from mainsail.usage import models as usage_models  # noqa: F401

metadata = Base.metadata

__all__ = ["metadata"]
