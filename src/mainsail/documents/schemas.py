"""Bodies of the document routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from mainsail.core.schemas import OutModel, StrictModel

Collection = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\w.\-: ]+$")]
Status = Literal["queued", "processing", "ready", "failed"]


MAX_FILENAME = 512


class ChunkingIn(StrictModel):
    chunk_size: Annotated[int, Field(ge=16, le=8192)]
    chunk_overlap: Annotated[int, Field(ge=0, le=4096)] = 0


class TextDocumentIn(StrictModel):
    """A document given inline (plain text or Markdown)."""

    text: Annotated[str, Field(min_length=1)]
    filename: Annotated[str, Field(min_length=1, max_length=MAX_FILENAME)] | None = None
    collection: Collection | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    chunking: ChunkingIn | None = None

    @field_validator("text")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank")
        return value


class DocumentOut(OutModel):
    id: uuid.UUID
    collection: str
    filename: str | None
    content_type: str
    size_bytes: int
    sha256: str
    metadata: dict[str, Any] = Field(validation_alias="meta")
    chunking: dict[str, Any] | None
    status: Status
    error: str | None
    revision: int
    active_revision: int | None
    chunk_count: int
    job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
