from __future__ import annotations

import time

from mainsail.core.ids import uuid7


def test_uuid7_has_version_7_and_rfc_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == "specified in RFC 4122"


def test_uuid7_embeds_the_current_millisecond_and_sorts_by_time() -> None:
    before = time.time_ns() // 1_000_000
    first = uuid7()
    time.sleep(0.002)
    second = uuid7()
    assert before <= first.int >> 80 <= time.time_ns() // 1_000_000
    assert first < second
    assert len({uuid7() for _ in range(10_000)}) == 10_000
