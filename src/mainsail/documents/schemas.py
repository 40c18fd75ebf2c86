"""Bodies of the document routes."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from mainsail.core.schemas import OutModel, StrictModel, is_text

# Letters, digits, spaces and . _ - :, not spaces alone.
Collection = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[\w.\-: ]*[\w.\-:][\w.\-: ]*$")
]
Status = Literal["queued", "processing", "ready", "failed"]


MAX_FILENAME = 512
MAX_JSON_DEPTH = 32
MAX_METADATA_BYTES = 65_536  # a document's metadata as JSON (the upload form field's limit)


def metadata_problem(value: Any) -> str | None:
    """What keeps a caller's metadata (parsed JSON) out of a jsonb column, or None.

    Walked without recursion, as a hostile value may nest beyond the interpreter's stack:
    nesting past ``MAX_JSON_DEPTH``, NaN or Infinity (JSON has neither, but parsers accept
    them), and lone surrogates (JSON may spell "\\udfff", which is no character).
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            return f"is nested over {MAX_JSON_DEPTH} levels deep"
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            return "holds NaN or Infinity, which JSON does not have"
        elif isinstance(item, str) and not is_text(item):
            return "holds a lone surrogate (\\ud800-\\udfff), which is not a character"
    # Compact, as a client sends it (json.dumps' default ", " and ": " add two bytes a member).
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(compact.encode()) > MAX_METADATA_BYTES:
        return f"is over {MAX_METADATA_BYTES:,} bytes as JSON"
    return None


def storable_metadata(cls: type, value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A body's ``metadata`` validator: ``metadata_problem`` as a validation error."""
    if value is not None and (problem := metadata_problem(value)):
        raise ValueError(f"the metadata {problem}")
    return value


class ChunkingIn(StrictModel):
    chunk_size: Annotated[int, Field(ge=16, le=8192)]
    # Absent: the default overlap, at most a quarter of chunk_size (as for index versions).
    chunk_overlap: Annotated[int, Field(ge=0, le=4096)] | None = None


class TextDocumentIn(StrictModel):
    """A document given inline (plain text or Markdown)."""

    text: Annotated[str, Field(min_length=1)]
    filename: Annotated[str, Field(min_length=1, max_length=MAX_FILENAME)] | None = None
    collection: Collection | None = None
    # Omitted or null: none for a new document; a new revision keeps the document's.
    metadata: dict[str, Any] | None = None
    chunking: ChunkingIn | None = None

    @field_validator("text")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank")
        if "\x00" in value:
            raise ValueError("the text holds NUL characters (U+0000), which text does not")
        return value

    _storable = field_validator("metadata")(storable_metadata)


class DocumentPatchIn(StrictModel):
    """``PATCH /documents/{id}``: a JSON merge patch (RFC 7396) of the document. ``metadata``:
    each key given is set, a key given as null is removed, objects within merge the same way;
    ``"metadata": null`` removes all of it. Omitted: unchanged."""

    metadata: dict[str, Any] | None = None

    _storable = field_validator("metadata")(storable_metadata)


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
