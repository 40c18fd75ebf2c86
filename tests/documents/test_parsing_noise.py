"""Markdown and HTML parsing keep what a reader sees and nothing else: no base64 payloads,
HTML comments or hidden elements in the index; equations, line breaks and code indentation
kept."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mainsail.documents.chunking import SEPARATOR, Chunker
from mainsail.documents.parsing import Block, parse
from mainsail.documents.parsing.markdown import without_data_payloads
from mainsail.embeddings.local import model_dir


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


def _markdown(tmp_path: Path, text: str) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return list(parse(path, "text/markdown"))


def _html(tmp_path: Path, page: str) -> list[Block]:
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    return list(parse(path, "text/html"))


def _payload(kib: int) -> str:
    """Base64 of incompressible bytes, as an inline PNG in a README would hold."""
    data = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(kib * 24))
    return base64.b64encode(data).decode("ascii")


PROSE = (
    "# Widget\n\nWidget resizes harbour charts for sailors.\n\n"
    "## Install\n\nRun pip install widget.\n\n{image}\n\n## Usage\n\nCall widget.resize().\n"
)


# --- Markdown: base64 data: URIs ------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "![screenshot](data:image/png;base64,{payload})",
        '<p align="center"><img src="data:image/png;base64,{payload}" alt="screenshot"></p>',
    ],
    ids=["markdown-image", "raw-html-img"],
)
def test_markdown_inline_base64_image_is_not_indexed(
    tmp_path: Path, tokenizer: Tokenizer, image: str
) -> None:
    """A 10 KiB inline image made 44 of a README's 48 chunks base64 (a 100 KiB one 433 of
    437); the repo README sample's one 3 KB badge logo makes 13 of its 53 chunks."""
    payload = _payload(10)
    chunker = Chunker(tokenizer, chunk_size=200, chunk_overlap=30)
    blocks = _markdown(tmp_path, PROSE.format(image=image.format(payload=payload)))
    plain = _markdown(tmp_path, PROSE.format(image=""))

    text = SEPARATOR.join(block.text for block in blocks)
    assert payload[:64] not in text
    assert payload[-64:] not in text
    assert "Run pip install widget." in text
    assert "Call widget.resize()." in text
    chunks = list(chunker.chunks(iter(blocks)))
    assert len(chunks) <= len(list(chunker.chunks(iter(plain)))) + 1


# --- Markdown: HTML comments ----------------------------------------------------------------


def test_markdown_heading_inside_an_html_comment_is_not_a_heading(tmp_path: Path) -> None:
    """CommonMark: ``<!--`` opens an HTML block that ends at ``-->``; a ``#`` line inside it
    is no heading. Here it replaced the visible heading path of all that followed."""
    blocks = _markdown(
        tmp_path,
        "# Guide\n\n<!--\n# Old draft\nremoved section\n-->\n\nBody under the guide.\n",
    )

    assert all("Old draft" not in block.heading for block in blocks)
    body = next(block for block in blocks if block.text == "Body under the guide.")
    assert body.heading == ("Guide",)


def test_markdown_fence_inside_an_html_comment_does_not_swallow_the_document(
    tmp_path: Path,
) -> None:
    """A commented-out example with an opening fence opened a code block that never closed:
    every heading after it was lost and the rest of the document became one code block."""
    blocks = _markdown(
        tmp_path,
        "# Guide\n\n<!-- example disabled:\n```python\nold()\n-->\n\n"
        "## Install\n\nRun the installer.\n\n## Usage\n\nCall it.\n",
    )

    headings = [block.text for block in blocks if block.kind == "heading"]
    assert headings == ["Guide", "Install", "Usage"]
    run = next(block for block in blocks if "Run the installer." in block.text)
    assert (run.text, run.kind, run.heading) == (
        "Run the installer.",
        "paragraph",
        ("Guide", "Install"),
    )


def test_markdown_html_comment_text_is_not_indexed(tmp_path: Path) -> None:
    """No renderer shows a comment (the HTML parser already drops them); in Markdown its text
    (notes, lint pragmas, commented-out drafts) was indexed as content."""
    blocks = _markdown(
        tmp_path,
        "# Guide\n\nIntro <!-- TODO ask legal --> text.\n\n"
        "<!-- markdownlint-disable MD033 -->\n\n<!--\nsecret draft paragraph\n-->\n\nBody.\n",
    )

    text = SEPARATOR.join(block.text for block in blocks)
    for hidden in ("TODO ask legal", "markdownlint", "secret draft", "<!--", "-->"):
        assert hidden not in text
    assert "Body." in text
    assert "Intro" in text


# --- HTML: hidden content -------------------------------------------------------------------


def test_html_hidden_attribute_content_is_not_indexed(tmp_path: Path) -> None:
    """``hidden`` elements are display:none in every browser (the UA stylesheet); their text
    was indexed, and a hidden heading became the heading path of the visible text after it."""
    blocks = _html(
        tmp_path,
        "<h1>Guide</h1><p>Shown.</p>"
        "<div hidden><h2>Old section</h2><p>Draft secret.</p></div>"
        '<p hidden="">Also hidden.</p><p>Visible after.</p>',
    )

    assert [(block.text, block.heading) for block in blocks] == [
        ("Guide", ("Guide",)),
        ("Shown.", ("Guide",)),
        ("Visible after.", ("Guide",)),
    ]


# --- HTML: visible text lost or mangled -----------------------------------------------------


def test_html_inline_mathml_keeps_its_text(tmp_path: Path) -> None:
    """Browsers render MathML (``<math>``) as text; skipping it made "For m=1," read "For ,",
    the loss the DOCX parser was fixed for (CHANGELOG: inline equations keep their text)."""
    blocks = _html(
        tmp_path,
        "<p>For <math><mi>m</mi><mo>=</mo><mn>1</mn></math>, the series converges.</p>",
    )

    assert [block.text for block in blocks] == ["For m=1, the series converges."]


def test_html_end_tag_br_breaks_the_line(tmp_path: Path) -> None:
    """HTML parsing reads ``</br>`` as ``<br>`` (the spec's "act as if a br start tag"); it
    was dropped and joined the words on either side ("gammadelta")."""
    blocks = _html(tmp_path, "<p>gamma</br>delta</p>")

    assert [block.text for block in blocks] == ["gamma\ndelta"]


def test_html_pre_keeps_the_first_lines_indentation(tmp_path: Path) -> None:
    """``<pre>`` shows whitespace as written; the first line lost its indentation (the block
    was stripped), so code's relative indentation was wrong."""
    blocks = _html(tmp_path, "<pre>    if ready:\n        launch()</pre>")

    assert [(block.text, block.kind) for block in blocks] == [
        ("    if ready:\n        launch()", "code")
    ]


def test_a_data_uri_split_across_reads_loses_its_whole_payload() -> None:
    """The payload may run over many reads of the file, and the ``data:...;base64,`` prefix
    itself may be cut by one."""
    payload = "QUJD" * 5000
    text = f"See ![logo](data:image/png;base64,{payload}) here, and data: is a word."
    for size in (7, 64, 1000, 4096):
        pieces = (text[i : i + size] for i in range(0, len(text), size))
        assert "".join(without_data_payloads(pieces)) == (
            "See ![logo](data:image/png;base64,) here, and data: is a word."
        )


def test_html_hidden_keeps_namesakes_inside_and_until_found_content(tmp_path: Path) -> None:
    blocks = _html(
        tmp_path,
        "<div hidden><div>inner</div><p>still hidden</p></div><p>Shown.</p>"
        '<div hidden="until-found">Found by page search.</div>'
        "<div><p hidden>Hidden para<div>Block after.</div></div>",
    )

    assert [block.text for block in blocks] == [
        "Shown.",
        "Found by page search.",
        "Block after.",
    ]
