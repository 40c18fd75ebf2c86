"""Base classes for request and response bodies."""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class OutModel(BaseModel):
    """Response bodies, built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


def is_text(value: str) -> bool:
    """False for a str holding a lone surrogate (JSON may spell "\\udfff"), which is no
    character and which PostgreSQL refuses."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_blank(value: str) -> bool:
    """True when ``value`` shows nothing: only whitespace and invisible format or control
    characters (zero-width spaces and joiners, BOMs, bidi marks), which ``str.strip`` keeps."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc") for ch in value)
