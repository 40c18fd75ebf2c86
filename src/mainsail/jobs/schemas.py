"""Bodies of the job routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from mainsail.core.schemas import OutModel

State = Literal["queued", "running", "succeeded", "retrying", "dead", "failed"]


class JobOut(OutModel):
    id: uuid.UUID
    kind: str
    state: State
    attempts: int
    max_attempts: int
    last_error: str | None
    progress: dict[str, Any]
    payload: dict[str, Any]
    run_after: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
