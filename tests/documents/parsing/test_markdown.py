"""Markdown: heading paths, code fences, lists, tables, front matter; text kept as written."""

from __future__ import annotations

from pathlib import Path

from mainsail.documents.parsing import Block, ParseLimits, parse

FIXTURES = Path(__file__).parents[1] / "fixtures"
GUIDE = ("Mainsail guide",)
INSTALL = ("Mainsail guide", "Install")
LINUX = ("Mainsail guide", "Install", "Linux")
REFERENCE = ("Mainsail guide", "Reference")


def _parse(tmp_path: Path, text: str, limits: ParseLimits = ParseLimits()) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return list(parse(path, "text/markdown", limits))


def test_sample_markdown_parses_into_structured_blocks() -> None:
    blocks = list(parse(FIXTURES / "sample.md", "text/markdown"))

    assert blocks == [
        Block("---\ntitle: Mainsail guide\ntags: [docs]\n---", kind="metadata"),
        Block("Mainsail guide", heading=GUIDE, kind="heading"),
        Block(
            "Mainsail is a small AI backend. Café owners in 中文 cities love it 🚀.", heading=GUIDE
        ),
        Block("Install", heading=INSTALL, kind="heading"),
        Block(
            "- Download the installer\n- Run it\n  with a continuation line",
            heading=INSTALL,
            kind="list",
        ),
        Block("1. First step\n2. Second step", heading=INSTALL, kind="list"),
        Block("Linux", heading=LINUX, kind="heading"),
        Block(
            "```bash\n# this is a comment, not a heading\nmake install\n```",
            heading=LINUX,
            kind="code",
        ),
        Block("> A quoted tip.", heading=LINUX, kind="quote"),
        Block("Reference", heading=REFERENCE, kind="heading"),
        Block(
            "| Name    | Value |\n|---------|-------|\n| timeout | 30 s  |",
            heading=REFERENCE,
            kind="table",
        ),
        Block("Overview", heading=("Overview",), kind="heading"),
        Block("Closing words.", heading=("Overview",)),
    ]


def test_a_deeper_heading_after_a_skipped_level_nests_and_a_shallower_one_pops(
    tmp_path: Path,
) -> None:
    blocks = _parse(tmp_path, "# A\n### C\ntext\n## B ##\nmore\n")

    assert [(block.text, block.heading) for block in blocks] == [
        ("A", ("A",)),
        ("C", ("A", "C")),
        ("text", ("A", "C")),
        ("B", ("A", "B")),
        ("more", ("A", "B")),
    ]


def test_an_unclosed_fence_keeps_the_rest_as_code(tmp_path: Path) -> None:
    blocks = _parse(tmp_path, "intro\n~~~\n# not a heading\n\nstill code\n")

    assert blocks == [Block("intro"), Block("~~~\n# not a heading\n\nstill code", kind="code")]


def test_a_thematic_break_at_the_top_is_not_front_matter_when_it_never_closes(
    tmp_path: Path,
) -> None:
    blocks = _parse(tmp_path, "---\n# Title\n\nBody text.\n")

    assert blocks == [
        Block("Title", heading=("Title",), kind="heading"),
        Block("Body text.", heading=("Title",)),
    ]


def test_thematic_breaks_around_markdown_at_the_top_are_not_front_matter(
    tmp_path: Path,
) -> None:
    """Front matter opens with a mapping key; a document that starts with "---" and has
    another later is Markdown, headings and all (a setext one included)."""
    blocks = _parse(tmp_path, "---\n## Two\n\nBody text.\n\n---\n\nMore.\n")

    assert blocks == [
        Block("Two", heading=("Two",), kind="heading"),
        Block("Body text.", heading=("Two",)),
        Block("More.", heading=("Two",)),
    ]
    setext = _parse(tmp_path, "---\nSetext two\n---\n\nText.\n")
    assert setext[0] == Block("Setext two", heading=("Setext two",), kind="heading")


def test_a_long_code_block_is_cut_but_stays_code(tmp_path: Path) -> None:
    code = "\n".join(f"line_{number} = {number}" for number in range(40))

    blocks = _parse(tmp_path, f"```\n{code}\n```\n", ParseLimits(max_block_chars=100))

    assert len(blocks) > 3
    assert all(block.kind == "code" and len(block.text) <= 100 for block in blocks)
    assert "\n".join(block.text for block in blocks) == f"```\n{code}\n```"
