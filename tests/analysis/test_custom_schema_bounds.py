"""Custom schemas refused before any model call: a $id on a node a reference passes through
(under draft 7's definitions too), fan-out through allOf and references that validating one
value could not do in bounded time, and pointer segments that are not plain decimals."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mainsail.analysis.custom_schema import InvalidSchema, check_custom_schema

LIMITS = {"max_bytes": 32_768, "max_depth": 16}


def test_remote_ref_behind_nested_id_under_definitions_is_refused_by_the_check() -> None:
    """``definitions`` holds subschemas (referencing's 2020-12 spec reads it so): a ``$id``
    on a node a pointer passes *through* is refused, since the validator would resolve
    ``#/properties/c`` against it and reach a remote ``$ref`` the walk never visited (once
    accepted: Unresolvable after a paid call, or, with a default registry, a fetch)."""
    schema = {
        "type": "object",
        "definitions": {
            "a": {
                "$id": "http://169.254.169.254/a.json",
                "properties": {
                    "b": {"$ref": "#/properties/c"},
                    "c": {"$ref": "http://169.254.169.254/latest/meta-data"},
                },
            }
        },
        "properties": {"c": {"type": "string"}, "x": {"$ref": "#/definitions/a/properties/b"}},
    }
    with pytest.raises(InvalidSchema):
        check_custom_schema(schema, **LIMITS)


def test_nested_id_under_definitions_unresolvable_ref_is_refused_by_the_check() -> None:
    """The plain form: a pointer through a ``definitions`` entry with its own ``$id``
    resolves differently in the validator (PointerToNowhere) than in the walk: refused."""
    schema = {
        "type": "object",
        "definitions": {
            "a": {
                "$id": "http://example.com/a.json",
                "properties": {"b": {"$ref": "#/definitions/c"}},
            },
            "c": {"type": "string"},
        },
        "properties": {"x": {"$ref": "#/definitions/a/properties/b"}},
    }
    with pytest.raises(InvalidSchema):
        check_custom_schema(schema, **LIMITS)


def test_fan_out_through_allof_refs_is_bounded_at_validation_too() -> None:
    """The check is cheap, but the validator has no memo: 4 levels of allOf with 40 shared
    refs each (~2 KB) would cost 40**4 descents per model answer, on the event loop. The
    check refuses what validating one value could not do in bounded time."""
    script = textwrap.dedent(
        """
        from mainsail.analysis.custom_schema import (
            InvalidSchema, check_custom_schema, validator_for,
        )
        b, levels = 40, 4
        defs = {f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}] * b} for i in range(levels)}
        defs[f"d{levels}"] = {"type": "string"}
        schema = {"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/d0"}}}
        try:
            check_custom_schema(schema, max_bytes=32768, max_depth=16)
        except InvalidSchema:
            raise SystemExit(0)
        list(validator_for(schema).iter_errors({"x": "s"}))
        """
    )
    try:
        subprocess.run([sys.executable, "-c", script], timeout=10, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("validating one small answer against an accepted 2 KB schema ran > 10 s")


def test_pointer_segment_with_a_non_decimal_digit_is_a_422_not_a_500() -> None:
    """``"¹".isdigit()`` is True but ``int("¹")`` raises ValueError: the reference is
    refused (422), not a crash (500), also percent-encoded (%C2%B9)."""
    schema = {
        "type": "object",
        "$defs": {"a": {"allOf": [{"type": "string"}]}},
        "properties": {"x": {"$ref": "#/$defs/a/allOf/%C2%B9"}},
    }
    with pytest.raises(InvalidSchema):
        check_custom_schema(schema, **LIMITS)
