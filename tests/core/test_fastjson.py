"""The hot path's JSON: what the standard library would write, and where orjson refuses."""

from __future__ import annotations

import json

import pytest

from mainsail.core import fastjson

_SAMPLES = [
    {"model": "m", "messages": [{"role": "user", "content": 'héllo ✓ \u2028 "q"'}], "n": 1},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6}, "x": None, "f": 0.1},
    [1, 2.5, True, False, None, "", {"nested": [{}]}],
]


@pytest.mark.parametrize("value", _SAMPLES)
def test_the_same_json_as_the_standard_library_writes_compactly(value: object) -> None:
    ours = fastjson.dumps(value)
    assert json.loads(ours) == value
    assert ours == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def test_what_orjson_refuses_is_written_by_the_standard_library() -> None:
    huge = {"maximum": 2**70, 3: "non-string key"}  # a caller's tool schema can hold these
    assert json.loads(fastjson.dumps(huge)) == {"maximum": 2**70, "3": "non-string key"}


def test_bad_json_is_a_value_error_as_with_the_standard_library() -> None:
    with pytest.raises(ValueError, match="line 1 column 2"):
        fastjson.loads(b"{not json")
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads("[1,")
    assert fastjson.loads('{"a": [1, "é"]}') == {"a": [1, "é"]}
