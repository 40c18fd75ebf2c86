"""A caller's JSON Schema for the ``custom`` task, checked before any model sees it.

Draft 2020-12 only; bounded in size and in depth (with local ``$ref`` followed, so a schema
that recurses without end is refused like one nested too deep); references must stay inside
the document: a remote ``$ref`` would make the server fetch URLs a caller chose.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from mainsail.core.errors import UnprocessableContent

_REF_KEYS = ("$ref", "$dynamicRef")


class InvalidSchema(UnprocessableContent):
    code, title = "invalid_schema", "Invalid JSON Schema"


def check_custom_schema(schema: Any, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise InvalidSchema("options.schema must be a JSON object (a JSON Schema).")
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > max_bytes:
        raise InvalidSchema(f"options.schema is {size} bytes; the limit is {max_bytes}.")
    declared = schema.get("$schema")
    if declared is not None and "2020-12" not in str(declared):
        raise InvalidSchema("options.schema must be JSON Schema draft 2020-12.")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidSchema(f"options.schema is not valid JSON Schema: {exc.message}") from None
    _walk(schema, schema, depth=0, max_depth=max_depth)
    if schema.get("type", "object") != "object":
        raise InvalidSchema('options.schema must describe an object ("type": "object").')
    return schema


def _walk(node: Any, root: dict[str, Any], *, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise InvalidSchema(
            f"options.schema nests (or recurses through $ref) deeper than {max_depth} levels."
        )
    if isinstance(node, list):
        for item in node:
            _walk(item, root, depth=depth + 1, max_depth=max_depth)
        return
    if not isinstance(node, dict):
        return
    for key in _REF_KEYS:
        ref = node.get(key)
        if ref is None:
            continue
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise InvalidSchema(
                f"options.schema: {key} {ref!r} points outside the schema; only local "
                "references (#/...) are allowed."
            )
        _walk(_resolve(root, ref), root, depth=depth + 1, max_depth=max_depth)
    for key, value in node.items():
        if key not in _REF_KEYS and key not in ("enum", "const", "examples", "default"):
            _walk(value, root, depth=depth + 1, max_depth=max_depth)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    pointer = ref[1:]
    if pointer in ("", "/"):
        return root
    if not pointer.startswith("/"):
        raise InvalidSchema(f"options.schema: $ref {ref!r} is not a JSON pointer (#/...).")
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidSchema(f"options.schema: $ref {ref!r} points at nothing.")
    return node
