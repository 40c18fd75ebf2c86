"""Edges across areas found in a second look at one day's fixes: removed citation markers
and the spaces around them, Latin words against CJK text, unspaced text in long blocks, job
runner lanes and their wake-ups, and YAML comments in front matter."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from mainsail.chat.answering import Source, cite
from mainsail.documents.parsing.htmldoc import _BlockParser
from mainsail.jobs.service import JobRunner
from mainsail.llm.providers.extractive import NOT_FOUND, Passage, answer
from mainsail.llm.sentences import words
from mainsail.settings import JobSettings


def _source(text: str) -> Source:
    return Source(
        chunk_id=1, document_id="d", title=None, filename=None, text=text, page=None,
        page_end=None, heading=(), char_start=0, char_end=len(text), score=1.0,
    )  # fmt: skip


# --- a removed marker keeps the words around it apart ------------------------------------


def test_extractive_quote_keeps_words_apart_when_a_source_marker_goes() -> None:
    text = answer(
        "Which results are good?",
        [Passage(id="1", text="The results, as shown in [2] and [3], are good.")],
    )
    assert "inand" not in text
    assert "as shown in and, are good." in text


# --- cite(): a removed marker leaves one space, not two ----------------------------------


def test_cite_invalid_marker_after_valid_one_leaves_single_space() -> None:
    cited = cite("The sun is hot [1] [9] and bright.", [_source("The sun is hot.")])
    assert cited.answer == "The sun is hot [1] and bright."


def test_cite_two_invalid_markers_leave_single_space() -> None:
    cited = cite("The sun is hot [9] [8] and bright.", [_source("The sun is hot.")])
    assert cited.answer == "The sun is hot and bright."


# --- words(): a Latin word written against CJK text stays a word -------------------------


def test_words_keeps_latin_word_joined_to_cjk() -> None:
    assert "docker" in words("Dockerはコンテナ技術です", shortest=2)


def test_extractive_finds_latin_name_inside_cjk_sentence() -> None:
    text = answer("What is Docker?", [Passage(id="1", text="Dockerはコンテナ技術です。")])
    assert text != NOT_FOUND


# --- word_end looks back at most half a block --------------------------------------------


def test_html_unspaced_text_is_not_emitted_one_character_a_block() -> None:
    parser = _BlockParser(100)
    parser.feed("<p>" + "漢" * 1500)
    for _ in range(5):  # further reads of the same unspaced paragraph
        parser.feed("字")
    parser.feed("</p>")
    parser.close()
    parser.finish()
    blocks = list(parser.drain())
    assert "".join(b.text for b in blocks) == "漢" * 1500 + "字" * 5
    assert min(len(b.text) for b in blocks[:-1]) > 10, [len(b.text) for b in blocks]


# --- JobRunner: each lane has its own wake-up event --------------------------------------


async def test_wake_during_a_short_lanes_claim_is_not_eaten_by_the_long_lane() -> None:
    runner = JobRunner(
        None,  # type: ignore[arg-type]  # run_one is replaced: no database
        JobSettings(executor="inprocess", poll_interval_s=5.0),
        worker="test",
    )
    runner.long_kinds = ("reindex",)
    gate = asyncio.Event()
    short_calls = 0

    async def run_one(job_id: Any = None, *, long: bool | None = None) -> bool:
        nonlocal short_calls
        if long is False:
            short_calls += 1
            if short_calls == 1:
                await gate.wait()  # the short lane is looking when the job is queued
        return False

    runner.run_one = run_one  # type: ignore[method-assign]
    long_lane = asyncio.create_task(runner._loop(True))
    short_lane = asyncio.create_task(runner._loop(False))
    try:
        await asyncio.sleep(0.05)  # the long lane waits; the short lane is claiming
        runner.wake()  # NOTIFY: a short job was queued (after the short lane's claim read)
        await asyncio.sleep(0.05)  # the long lane wakes, clears, finds no long job
        gate.set()  # the short lane's claim ends empty
        await asyncio.sleep(0.3)
        assert short_calls >= 2, "the short lane slept through the wake-up (next poll in 5 s)"
    finally:
        for task in (long_lane, short_lane):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- front matter that opens with a YAML comment stays metadata --------------------------


def test_front_matter_opening_with_a_yaml_comment_stays_metadata(tmp_path: Any) -> None:
    from mainsail.documents.parsing.markdown import parse_markdown
    from mainsail.documents.parsing.model import ParseLimits

    path = tmp_path / "page.md"
    path.write_text("---\n# Page settings\ntitle: Hello\ntags: [a, b]\n---\nBody text here.\n")
    blocks = list(parse_markdown(path, ParseLimits()))
    assert [b.kind for b in blocks] == ["metadata", "paragraph"], blocks
    assert blocks[-1].heading == ()
