"""PDF text extraction as a user meets it in search results and citations: words broken at
line ends (soft and hard hyphens) and words of one line read as many lines. Each test builds
a small PDF shaped like a sample of ../shared/data/documents/pdf (named in the test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

from pypdf import PdfReader, PdfWriter
from pypdf.generic import BooleanObject, DecodedStreamObject, DictionaryObject, NameObject
from sqlalchemy.engine import URL

from mainsail.documents.parsing import Block, parse
from tests.documents.fixtures.make_fixtures import pdf_bytes
from tests.fixtures.database import keyword_match

Show = Callable[[str], bytes]


def _parse(tmp_path: Path, data: bytes) -> list[Block]:
    path = tmp_path / "doc.pdf"
    path.write_bytes(data)
    return list(parse(path, "application/pdf"))


def _pdf_with_ops(
    pages: Sequence[Callable[[Show], bytes]], texts: Sequence[str], *, marked: bool = False
) -> bytes:
    """A PDF made by ``pdf_bytes`` (its Type0 font with a ToUnicode map of every character in
    ``texts``) whose page contents are then replaced by raw operators. Each page is a function
    of ``show``, which turns a string into that font's glyph string operand."""
    chars = sorted({char for text in texts for char in text})
    cid_of = {char: index + 1 for index, char in enumerate(chars)}  # as pdf_bytes numbers them

    def show(text: str) -> bytes:
        return b"<%s>" % "".join(f"{cid_of[char]:04X}" for char in text).encode("ascii")

    writer = PdfWriter(clone_from=PdfReader(BytesIO(pdf_bytes([["".join(chars)]] * len(pages)))))
    for page, ops in zip(writer.pages, pages, strict=True):
        content = DecodedStreamObject()
        content.set_data(ops(show))
        page[NameObject("/Contents")] = writer._add_object(content)
    if marked:
        writer._root_object[NameObject("/MarkInfo")] = DictionaryObject(
            {NameObject("/Marked"): BooleanObject(True)}
        )
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


# --- Hyphenation at line ends -----------------------------------------------------------------


async def test_pdf_soft_hyphen_at_a_line_end_does_not_leave_the_word_split(
    tmp_path: Path, database_url: URL
) -> None:
    """ISO 32000-1 §14.8.2.2.3: a hyphen added by hyphenation is written as U+00AD in the text
    layer. In a PDF a soft hyphen is only ever visible, hence present, at a line end. clean()
    drops it (textio.py, the soft-hyphen entry of _CLEAN) but the line break it marked stays,
    so the stored text says "ef\\nficient": two words, "ef" and "ficient", and keyword search
    for "efficient" misses the passage. Unlike a hard hyphen there is nothing to guess."""
    data = pdf_bytes(
        [
            [
                "Open-domain question answering in this work relies on ef\u00ad",
                "ficient passage retrieval to select candidate contexts, where the",
                "traditional sparse models such as BM25 are the de facto method.",
            ]
        ]
    )
    text = "\n\n".join(block.text for block in _parse(tmp_path, data))

    assert await keyword_match(database_url, text, "efficient"), repr(text)
    assert "efficient passage retrieval" in text.replace("\n", " "), repr(text)


async def test_pdf_hyphenated_line_break_of_a_word_the_page_also_spells_whole_is_joined(
    tmp_path: Path, database_url: URL
) -> None:
    """TeX and Word justify with hard hyphens at line ends ("ef-\\nficient", "Su-\\npreme").
    Across the samples 734 lines end that way inside a block (scotus__598us1r6: 225 in one
    opinion); for 555 of them (76%) the joined word occurs elsewhere in the same document
    unhyphenated, and only 26 are compounds the document spells with a hyphen elsewhere
    ("dual-encoder"). parse_pdf joins none, so "ef-" and "ficient" are what PostgreSQL
    indexes, and a keyword search for "efficient" misses the passage although the same page
    spells "efficient" whole. Joining when the page (or document so far) has the joined form
    and not the hyphenated one is safe; a compound it spells with a hyphen keeps it."""
    data = pdf_bytes(
        [
            [
                "Open-domain question answering in this work relies on ef-",
                "ficient passage retrieval with an encoder trained as a dual-",
                "encoder over the questions and passages of the training set.",
                "",
                "Efficient retrieval keeps the dual-encoder small enough for a laptop.",
            ]
        ]
    )
    blocks = _parse(tmp_path, data)
    broken = next(block.text for block in blocks if "passage retrieval" in block.text)

    assert await keyword_match(database_url, broken, "efficient"), repr(broken)
    assert "efficient passage retrieval" in broken.replace("\n", " "), repr(broken)
    assert "dualencoder" not in broken, repr(broken)  # the compound keeps its hyphen


# --- Words of one line read as many -----------------------------------------------------------

SENTENCE = "This module introduces the learner to product development and quality assurance"
WORDS = SENTENCE.split(" ")


def _skia_page(show: Show) -> bytes:
    """What Google Docs' PDF export (Producer "Skia/PDF m117 Google Docs Renderer",
    unstructured__list-item-example.pdf) writes: a flipped page (1 0 0 -1 0 792 cm) and one
    BT/ET per word, each placed with a flipped Tm and a Td, all words on one baseline."""
    ops = [b"1 0 0 -1 0 792 cm"]
    x = 77.0
    for word in WORDS:
        ops.append(b"BT /F1 14 Tf 1 0 0 -1 %.2f 100.48 Tm 0 -13.28 Td %s Tj ET" % (x, show(word)))
        x += 8 * len(word) + 5
    return b"\n".join(ops)


def test_pdf_words_on_one_baseline_in_separate_text_objects_are_one_line(
    tmp_path: Path,
) -> None:
    """pypdf puts a newline between such words; parse_pdf's own coordinates say every one of
    them is on the same baseline (_lines_from keeps a y per line, _breaks sees a gap of 0) but
    the lines are kept apart and the short-line rule then ends a paragraph after most of them.
    unstructured__list-item-example.pdf becomes 218 blocks, 213 of them under 40 characters
    ("to", "the", "of"...): 78% of its line breaks join words on one baseline (70% in
    markitdown__movie-theater-booking, 64% in SPARSE-2024-INV, where a label and its value,
    or a table row's cells, become separate paragraphs). A user's citation shows a column of
    words, and quotes of a sentence match no chunk text."""
    data = _pdf_with_ops([_skia_page], WORDS)

    assert [block.text for block in _parse(tmp_path, data)] == [" ".join(WORDS)]
