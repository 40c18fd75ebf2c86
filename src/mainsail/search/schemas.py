"""Bodies of ``POST /search``."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    FiniteFloat,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from mainsail.core.schemas import OutModel, StrictModel, is_blank, is_text
from mainsail.documents.schemas import MAX_METADATA_BYTES
from mainsail.search.query import ParsedQuery, parse, plain

# The fraction of a second in an ISO time: its first six digits, and any more.
_FRACTION = re.compile(r"([.,]\d{6})(\d+)")

# Index version ids are PostgreSQL integers.
MAX_VERSION_ID = 2**31 - 1

Mode = Literal["hybrid", "vector", "keyword"]
QuerySyntax = Literal["websearch", "plain"]
MetadataValue = str | int | FiniteFloat | bool  # JSON has no NaN or Infinity
# Any key a document's metadata can hold (65,536 bytes as JSON) can be filtered on.
MetadataKey = Annotated[str, Field(min_length=1, max_length=MAX_METADATA_BYTES)]


class Filters(StrictModel):
    """All given filters must hold (AND); a list means any of its values (IN)."""

    collections: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=64)]
        | None
    ) = None
    document_ids: Annotated[list[uuid.UUID], Field(max_length=1000)] | None = None
    # Equality on a document's metadata, or membership when the value is a list.
    metadata: (
        Annotated[
            dict[
                MetadataKey, MetadataValue | Annotated[list[MetadataValue], Field(max_length=100)]
            ],
            Field(max_length=16),
        ]
        | None
    ) = None
    # Documents uploaded in [created_after, created_before).
    created_after: datetime | None = None
    created_before: datetime | None = None

    @model_validator(mode="after")
    def _ordered_dates(self) -> Filters:
        # Strictly after: bounds in order as written that round to one microsecond make an
        # empty range, not an error.
        if self.created_after and self.created_before and self.created_after > self.created_before:
            raise ValueError("created_after must be before created_before")
        return self

    @field_validator("metadata")
    @classmethod
    def _characters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # JSON may spell a lone surrogate ("\udfff"), which PostgreSQL refuses. A str field
        # refuses it already; a str in a union (the values) is taken as it is.
        for item in value.values() if value else ():
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str) and not is_text(text):
                    raise ValueError("a value holds a lone surrogate (\\ud800-\\udfff)")
        return value

    @field_validator("created_after", "created_before", mode="wrap")
    @classmethod
    def _finer_than_microseconds(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Times are stored to the microsecond; a bound finer than that (.NET writes seven
        digits) is rounded up to the next one, so that [after, before) stays exact against
        them (truncated, a bound just past a document's time fell on the wrong side)."""
        match = _FRACTION.search(value) if isinstance(value, str) else None
        if match is None:
            return handler(value)
        parsed = handler(value[: match.start()] + match.group(1) + value[match.end() :])
        if isinstance(parsed, datetime) and match.group(2).strip("0"):
            try:
                parsed += timedelta(microseconds=1)
            except OverflowError:  # .NET's DateTime.MaxValue, "no upper bound": the last one
                parsed = datetime.max.replace(tzinfo=parsed.tzinfo)
        return parsed

    @field_validator("created_after", "created_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-01-31T00:00:00Z)")
        try:
            value.astimezone(UTC)  # compared in UTC, which must stay within years 1-9999
        except OverflowError:
            raise ValueError("the date is out of range (years 1-9999 in UTC)") from None
        return value


class SearchIn(StrictModel):
    # websearch: "a phrase" must occur in a result, -word and -"a phrase" must not (every
    # mode); plain: quotes and minus signs are ordinary text. (Before the query: its check
    # reads it.)
    query_syntax: QuerySyntax = "websearch"
    query: Annotated[str, Field(min_length=1, max_length=100_000)]
    mode: Mode = "hybrid"
    top_k: Annotated[int, Field(ge=1, le=1000)] = 10
    # Results to skip: the next page starts at the previous page's ``next_offset``.
    offset: Annotated[int, Field(ge=0, le=100_000)] = 0
    filters: Filters = Field(default_factory=Filters)
    # Admins only: search a built (ready) index version instead of the active one, to compare
    # versions before switching.
    index_version: Annotated[int, Field(ge=1, le=MAX_VERSION_ID)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """``null`` for an optional field is its default, as omitting it is (JSON clients
        write null for a field they leave unset); the query itself stays required."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k == "query"}
        return data

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if is_blank(value):
            raise ValueError("the query is blank")
        if "\x00" in value:  # PostgreSQL's text cannot hold it, in any mode
            raise ValueError("the query holds a NUL character (U+0000)")
        if info.data.get("query_syntax") == "websearch" and is_blank(parse(value).text):
            raise ValueError("the query has no words to search for, only excluded ones")
        return value

    def parsed(self) -> ParsedQuery:
        return parse(self.query) if self.query_syntax == "websearch" else plain(self.query)


class Ranks(OutModel):
    """1-based rank of the passage in each retriever's list (null: not in its candidates)."""

    vector: int | None = None
    keyword: int | None = None


class SearchHit(OutModel):
    chunk_id: int
    document_id: uuid.UUID
    collection: str
    title: str | None  # the document's metadata "title", else its filename
    filename: str | None
    ordinal: int
    text: str
    # hybrid: the fused (RRF) score; vector: cosine similarity; keyword: BM25.
    score: float
    ranks: Ranks
    page: int | None
    page_end: int | None
    heading: list[str]
    # Character offsets of the text in the document's extracted text.
    char_start: int
    char_end: int
    metadata: dict[str, Any]


class SearchOut(OutModel):
    results: list[SearchHit]
    mode: Mode
    index_version: int | None  # null when nothing is indexed yet
    offset: int
    next_offset: int | None  # null on the last page
    # Whether the vector retriever scanned exactly (small filtered sets) or used HNSW.
    vector_strategy: Literal["exact", "hnsw"] | None = None
    cached: bool = False


VersionState = Literal["building", "ready", "active", "retired", "failed"]


class IndexVersionIn(StrictModel):
    """A new index version; what is left out comes from the settings (``DOCUMENTS__*``)."""

    # "all-MiniLM-L6-v2@int8" / "@fp32" (local), or a catalogue model of kind embedding.
    embedder: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    chunk_size: Annotated[int, Field(ge=16, le=8192)] | None = None
    chunk_overlap: Annotated[int, Field(ge=0, le=4096)] | None = None


class IndexVersionOut(OutModel):
    id: int
    state: VersionState
    embedder: str
    dimension: int
    chunk_size: int
    chunk_overlap: int
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    job_id: uuid.UUID | None  # the build (reindex) job
    error: str | None
    # While building: phase, documents, done, chunks, skipped, errors (the first few).
    progress: dict[str, Any]
    # On the evaluation set, when one is configured: ndcg_at_10, recall_at_k, k, queries.
    quality: dict[str, Any] | None


class ActivationOut(OutModel):
    version: IndexVersionOut
    previous_id: int | None  # the version that was active (now ready, still queryable)
    # The gate's figures: {"candidate": ..., "active": ..., "margin": ...}; null when no
    # evaluation set is configured or the activation was forced.
    quality: dict[str, Any] | None


class RetirementOut(OutModel):
    version: IndexVersionOut
    purge_job_id: uuid.UUID | None  # deletes its chunks and index
