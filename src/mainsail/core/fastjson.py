"""JSON on the gateway's hot path: orjson, with the standard library where orjson refuses.

Per `/v1/chat/completions` call the gateway encodes the upstream request and its own answer
and decodes the upstream's answer; with the standard library that was ~12 µs of CPU, with
orjson ~1.5 µs (measured on the benchmark's shapes). Output is the same compact JSON
(``separators=(",", ":")``, non-ASCII as UTF-8). orjson refuses integers beyond 64 bits (a
caller's tool schema may hold one) and dictionary keys that are not strings: those go through
``json.dumps`` as before. Decoding accepts UTF-8 only, which is what HTTP APIs send.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

loads = orjson.loads  # raises orjson.JSONDecodeError, a json.JSONDecodeError (a ValueError)


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON bytes."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
