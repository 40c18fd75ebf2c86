"""Edges found in a third look at one day's fixes: the spaces a removed citation marker
leaves, date bounds finer than a microsecond, fallbacks the gateway cannot call, and file
names that differ only in bytes that are not UTF-8."""

from __future__ import annotations

from typing import Any

import pytest

# --- marker gaps (llm/sentences.py close_gaps, chat/answering.py cite) ---------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('He said "the sun is hot [9]".', 'He said "the sun is hot".'),
        ("**The sun is hot [9]** and bright.", "**The sun is hot** and bright."),
        ("It is `x [9]` here.", "It is `x` here."),
        ("「太陽は熱い[9]」と言った。", "「太陽は熱い」と言った。"),
        ("\uff08太陽は熱い[9]\uff09", "\uff08太陽は熱い\uff09"),
        ("The sun is hot [9]\r\nNext line.", "The sun is hot\r\nNext line."),
    ],
)
def test_a_removed_marker_before_a_closing_quote_or_emphasis_leaves_no_space(
    answer: str, expected: str
) -> None:
    """A marker removed right before a closing quote, Markdown emphasis or a CJK closing
    bracket left no space before 6186037/b4b590f; close_gaps now puts one there (only the
    characters of _CLOSING are known), which also breaks the Markdown ("**hot **")."""
    from mainsail.chat.answering import cite

    assert cite(answer, []).answer == expected


def test_a_removed_marker_inside_cjk_text_leaves_no_space() -> None:
    """CJK is written without spaces; a marker between two clauses with no space around it
    is removed without inserting one (close_gaps puts " " between any two characters)."""
    from mainsail.chat.answering import cite
    from mainsail.llm.sentences import without_markers

    assert cite("東京は首都[9]であり、大きい。", []).answer == "東京は首都であり、大きい。"
    assert without_markers("図[2]に示すとおり。") == "図に示すとおり。"


def test_a_removed_marker_at_a_line_start_keeps_the_line_indentation() -> None:
    """The spaces before a removed marker at the start of an indented line are the line's
    indentation (a list item's continuation paragraph, a code block): _GONE_RUN takes them
    with the marker, and the paragraph falls out of its list item."""
    from mainsail.chat.answering import cite

    answer = "1. Step one.\n\n   [9] Detail of step one."
    assert cite(answer, []).answer == "1. Step one.\n\n   Detail of step one."
    assert cite("- a\n  [9] more", []).answer == "- a\n  more"


# --- search/schemas.py: sub-microsecond bounds ----------------------------------------------


def test_a_comma_fraction_finer_than_a_microsecond_is_rounded_up_too() -> None:
    """ISO 8601 allows a comma before the fraction, and pydantic reads it; the rounding regex
    only knows "." so ",0000001" is truncated, the bug the rounding was meant to fix."""
    from datetime import UTC, datetime

    from mainsail.search.schemas import Filters

    dotted = Filters(created_after="2024-01-01T00:00:00.0000001Z").created_after
    comma = Filters(created_after="2024-01-01T00:00:00,0000001Z").created_after
    assert dotted == datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert comma == dotted


def test_dotnet_max_value_as_an_upper_bound_is_still_accepted() -> None:
    """.NET's DateTime.MaxValue ("9999-12-31T23:59:59.9999999Z"), a common "no upper bound",
    was accepted as created_before (truncated to .999999); rounding it up overflows and it
    is now a 422. Rounded past the largest time, an upper bound excludes nothing."""
    from mainsail.search.schemas import Filters

    bound = Filters(created_before="9999-12-31T23:59:59.9999999Z").created_before
    assert bound is not None
    assert bound.year == 9999


def test_bounds_in_order_as_written_are_not_refused_after_rounding() -> None:
    """created_after .0000001 is before created_before .000001, as written; rounded up it
    equals the upper bound and the request is refused with "created_after must be before
    created_before" (accepted before b4b590f). An empty range is an empty answer, not a 422
    that says something false."""
    from mainsail.search.schemas import Filters

    Filters(
        created_after="2024-01-01T00:00:00.0000001Z",
        created_before="2024-01-01T00:00:00.000001Z",
    )


# --- chat/service.py _limits: fallbacks the gateway cannot call ------------------------------


def test_an_unconfigured_fallback_does_not_shrink_the_prompt_budget(tmp_path: Any) -> None:
    """The gateway's Fallback chain holds only configured models (factory: ``if e.name in
    single``); _limits takes catalogue.chain, so a fallback whose provider has no key (never
    called) still cuts the prompt to its small window."""
    from types import SimpleNamespace

    from mainsail.chat.service import ChatService
    from mainsail.llm.catalogue import load_catalogue
    from mainsail.llm.factory import build_gateway
    from mainsail.settings import LLMSettings

    path = tmp_path / "catalogue.toml"
    path.write_text(
        """
[providers.nokey]
kind = "anthropic"
api_key_env = "MAINSAIL_REVIEW_NO_SUCH_KEY"

[models.big]
provider = "scripted"
model = "scripted"
context_window = 100000
max_output_tokens = 4000
fallbacks = ["small"]

[models.small]
provider = "nokey"
model = "small"
context_window = 900
max_output_tokens = 200
"""
    )
    settings = LLMSettings(use_standard_env=False, catalogue_file=path)
    gateway, _ = build_gateway(settings, catalogue=load_catalogue(path), environ={})
    assert "small" not in gateway.clients  # the gateway can never fall back to it
    stub = SimpleNamespace(gateway=gateway, settings=SimpleNamespace(max_prompt_tokens=None))
    answer_tokens, budget = ChatService._limits(stub, "big", 1000)  # type: ignore[arg-type]
    assert (answer_tokens, budget) == (1000, 100000 - 1000)


# --- uploader.py: names made readable -------------------------------------------------------


def test_two_latin1_names_that_differ_only_in_non_utf8_bytes_are_named_apart(
    tmp_path: Any,
) -> None:
    """café.txt and cafè.txt written in Latin-1 must keep distinct names (they once both
    read as "caf\\ufffd.txt", and _name_apart looped for ever: `mainsail ingest` hung before
    uploading anything); two files are never sent under one name."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"One.")
    (folder / os.fsdecode(b"caf\xe8.txt")).write_bytes(b"Two.")
    script = (
        "import sys; from mainsail.uploader import expand\n"
        "items, _ = expand([sys.argv[1]])\n"
        "print(len(items), len({i.name for i in items}))\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(folder)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("expand() never returned: _name_apart loops on equal readable names")
    assert done.stdout.decode().split() == ["2", "2"], done.stderr[-500:]
