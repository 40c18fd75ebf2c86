"""Reads ``POST /documents`` bodies as they stream: a multipart form whose file part goes
straight to the staging file (hashed on the way), or a JSON body with inline text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from python_multipart.multipart import MultipartParser
from starlette.exceptions import HTTPException
from starlette.requests import Request

from mainsail.core.errors import AppError, BadRequest, UnprocessableContent
from mainsail.documents.schemas import MAX_METADATA_BYTES, metadata_problem
from mainsail.documents.storage import DocumentStore, StagedFile, StagingWriter

MAX_FIELD_BYTES = 65_536
MAX_BOUNDARY = 200  # RFC 2046 says 70, the parser takes 256
MAX_FIELDS = 16
FILE_FIELD = "file"


@dataclass
class Upload:
    staged: StagedFile
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)


def _disposition(value: str) -> tuple[str | None, str | None]:
    message = Message()
    message["content-disposition"] = value
    name = message.get_param("name", header="content-disposition")
    return (name if isinstance(name, str) else None), message.get_filename()


async def read_multipart(request: Request, store: DocumentStore, max_bytes: int) -> Upload:
    content_type = request.headers.get("content-type", "")
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadRequest("The multipart body has no boundary.")
    fields: dict[str, str] = {}
    state: dict[str, Any] = {"header": b"", "value": b"", "headers": {}, "name": None}
    writer: StagingWriter | None = None
    filename: str | None = None
    buffer = bytearray()
    errors: list[Exception] = []
    ended: list[bool] = []

    def on_part_begin() -> None:
        state["headers"], state["name"] = {}, None
        buffer.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].decode("latin-1").lower()] = state["value"].decode(
            "utf-8", "replace"
        )
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        nonlocal writer, filename
        name, part_filename = _disposition(state["headers"].get("content-disposition", ""))
        state["name"] = name
        if name == FILE_FIELD:
            if writer is not None:
                errors.append(BadRequest("Send one file per request."))
                return
            filename = part_filename
            writer = store.writer(max_bytes)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if errors:
            return
        if state["name"] == FILE_FIELD and writer is not None:
            try:
                writer.write(data[start:end])
            except Exception as exc:
                errors.append(exc)
            return
        buffer.extend(data[start:end])
        if len(buffer) > MAX_FIELD_BYTES:
            if state["name"] == "metadata":  # over the metadata cap: a 422, as in a JSON body
                errors.append(
                    UnprocessableContent(
                        f"The form field 'metadata' is over {MAX_METADATA_BYTES:,} bytes as JSON."
                    )
                )
            else:
                errors.append(BadRequest(f"The form field {state['name']!r} is too long."))

    def on_part_end() -> None:
        name = state["name"]
        if name and name != FILE_FIELD:
            if len(fields) >= MAX_FIELDS:
                errors.append(BadRequest("Too many form fields."))
            fields[name] = buffer.decode("utf-8", "replace")

    def on_end() -> None:
        ended.append(True)

    if len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise BadRequest(f"The multipart boundary must be 1-{MAX_BOUNDARY} ASCII characters.")
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        async for piece in request.stream():
            parser.write(piece)
            if errors:
                raise errors[0]
        parser.finalize()
        if not ended:
            # No closing boundary: a client or a proxy cut the body short, and its last part
            # (the file, or a field after it) is incomplete.
            raise BadRequest(
                "The multipart body ends before its closing boundary: the upload was cut "
                "short; send it again."
            )
    except BaseException as exc:
        if writer is not None:  # also when cancelled (a server stopping, a client gone)
            writer.discard()
        if isinstance(exc, AppError | HTTPException) or not isinstance(exc, Exception):
            raise  # HTTPException: the body's size limit
        raise BadRequest("The multipart body is malformed.") from None
    if writer is None:
        raise BadRequest(f"The form has no {FILE_FIELD!r} part with the document.")
    return Upload(writer.finish(), filename, fields)


def stage_text(store: DocumentStore, text: str, max_bytes: int) -> StagedFile:
    writer = store.writer(max_bytes)
    try:
        data = text.encode("utf-8")
        for start in range(0, len(data), 1 << 20):
            writer.write(data[start : start + (1 << 20)])
    except Exception:
        writer.discard()
        raise
    return writer.finish()


def parse_json_field(value: str | None, name: str) -> dict[str, Any] | None:
    """A form field holding a JSON object; None when absent, empty or ``null``. A bad one is a
    422, as the same field is in a JSON body."""
    if value is None or value == "":
        return None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested beyond the parser's depth
        raise UnprocessableContent(f"The form field {name!r} must be a JSON object.") from None
    if parsed is None:
        return None
    if not isinstance(parsed, dict):
        raise UnprocessableContent(f"The form field {name!r} must be a JSON object.")
    if problem := metadata_problem(parsed):
        raise UnprocessableContent(f"The form field {name!r} {problem}.")
    return parsed
