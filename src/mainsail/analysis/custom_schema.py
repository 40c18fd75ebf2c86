"""A caller's JSON Schema for the ``custom`` task, checked before any model sees it.

Draft 2020-12 only; bounded in size and in depth (with local ``$ref`` followed, so a schema
that recurses without end is refused like one nested too deep); references must stay inside
the document: a remote ``$ref`` would make the server fetch URLs a caller chose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry

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
    _walk(schema, max_depth=max_depth)
    if schema.get("type", "object") != "object":
        raise InvalidSchema('options.schema must describe an object ("type": "object").')
    return schema


# Where a schema holds subschemas (draft 2020-12): one, a list of them, or a map of them. Every
# other keyword holds data (enum, const, default, examples, annotations), never walked: a key
# named "$ref" or "enum" there, or a property of that name, means nothing to the validator.
_ONE = frozenset(
    {
        "items", "additionalProperties", "unevaluatedProperties", "unevaluatedItems",
        "contains", "propertyNames", "not", "if", "then", "else", "contentSchema",
    }
)  # fmt: skip
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
# "definitions" is draft 7's $defs, which 2020-12 validators still read as subschemas.
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# Keywords whose subschemas apply to the same value as their schema: validating one value
# costs the sum over them, through references (allOf of 40 references, four levels deep, is
# 40**4 checks of one value on the event loop).
_SAME_VALUE_ONE = frozenset({"not", "if", "then", "else"})
_SAME_VALUE_LIST = frozenset({"allOf", "anyOf", "oneOf"})
_MAX_APPLIED = 10_000
# Work a check may do: each reference is followed once per depth, and the whole walk is capped
# (shared references can multiply a small schema's work without end otherwise).
_MAX_VISITS = 100_000


def _walk(root: dict[str, Any], *, max_depth: int) -> None:
    visits = 0
    done: set[tuple[str, int]] = set()  # (reference, depth) already followed
    applied = _applied_counter(root)

    def walk(node: Any, depth: int, path: tuple[str, ...]) -> None:
        nonlocal visits
        visits += 1
        if visits > _MAX_VISITS:
            raise InvalidSchema("options.schema takes too much work to check; simplify it.")
        if depth > max_depth:
            raise InvalidSchema(
                f"options.schema nests (or recurses through $ref) deeper than {max_depth} levels."
            )
        if not isinstance(node, dict):
            return  # a boolean schema
        if "$id" in node and node is not root:
            raise InvalidSchema("options.schema: $id is allowed at its root only.")
        for key in _REF_KEYS:
            ref = node.get(key)
            if ref is None:
                continue
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise InvalidSchema(
                    f"options.schema: {key} {ref!r} points outside the schema; only local "
                    "references (#/...) are allowed."
                )
            if ref in path:  # a reference inside itself: it would recurse without end
                raise InvalidSchema(
                    f"options.schema nests (or recurses through $ref) deeper than {max_depth} "
                    "levels."
                )
            if (ref, depth) not in done:
                walk(_resolve(root, ref), depth + 1, (*path, ref))
                done.add((ref, depth))
        for key, value in node.items():
            if key in _ONE:
                walk(value, depth + 1, path)
            elif key in _LIST and isinstance(value, list):
                for item in value:
                    walk(item, depth + 1, path)
            elif key in _MAP and isinstance(value, dict):
                for item in value.values():
                    walk(item, depth + 1, path)
        applied(node)  # after its subschemas: their references are checked by then

    walk(root, 0, ())


def _applied_counter(root: dict[str, Any]) -> Callable[[Any], int]:
    """How many subschemas a node applies to one value (through allOf, anyOf, oneOf, not,
    if/then/else, dependentSchemas and references), memoised; a node over ``_MAX_APPLIED``
    is refused. Only for nodes ``_walk`` has walked: their reference cycles are refused."""
    costs: dict[int, int] = {}

    def applied(node: Any) -> int:
        if not isinstance(node, dict):
            return 1
        known = costs.get(id(node))
        if known is not None:
            return known
        total = 1
        for key in _REF_KEYS:
            if isinstance(ref := node.get(key), str):
                total += applied(_resolve(root, ref))
        for key, value in node.items():
            if key in _SAME_VALUE_ONE:
                total += applied(value)
            elif key in _SAME_VALUE_LIST and isinstance(value, list):
                total += sum(applied(item) for item in value)
            elif key == "dependentSchemas" and isinstance(value, dict):
                total += sum(applied(item) for item in value.values())
            if total > _MAX_APPLIED:
                raise InvalidSchema(
                    "options.schema applies too many subschemas to one value (through allOf, "
                    "anyOf, oneOf and references); simplify it."
                )
        costs[id(node)] = total
        return total

    return applied


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """The node a local reference names, read as the validator reads it: a JSON pointer in a
    URI fragment (percent-encoded, then ~1 and ~0)."""
    node: Any = root
    pointer = unquote(ref[1:])
    if pointer in ("", "/"):
        return root
    if not pointer.startswith("/"):
        raise InvalidSchema(f"options.schema: $ref {ref!r} is not a JSON pointer (#/...).")
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and node is not root and "$id" in node:
            # The validator would resolve what follows against that $id: refused everywhere.
            raise InvalidSchema("options.schema: $id is allowed at its root only.")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidSchema(f"options.schema: $ref {ref!r} points at nothing.")
    return node


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of checked ``schema`` that never fetches anything: an empty registry, so
    a reference the check let through by mistake fails instead of reaching the network."""
    return Draft202012Validator(schema, registry=Registry())
