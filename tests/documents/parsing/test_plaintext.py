"""Plain text: encodings, paragraphs, cleaning, cutting, binary refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mainsail.documents.parsing import Block, CorruptDocument, ParseLimits, parse

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _texts(path: Path, limits: ParseLimits = ParseLimits()) -> list[str]:
    return [block.text for block in parse(path, "text/plain", limits)]


def test_sample_text_parses_into_paragraphs() -> None:
    blocks = list(parse(FIXTURES / "sample.txt", "text/plain"))

    assert blocks == [
        Block("Mainsail guide"),
        Block(
            "Mainsail is a small AI backend.\nIt stores documents and answers questions about them."
        ),
        Block("Café owners in 中文 cities love it 🚀."),
        Block("The end."),
        Block("Windows line one\nWindows line two"),
        Block("Last paragraph"),
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param("Café crème\n\nnaïve".encode("cp1252"), ["Café crème", "naïve"], id="cp1252"),
        pytest.param("Café\n\n中文 🚀".encode("utf-16"), ["Café", "中文 🚀"], id="utf-16-bom"),
        pytest.param(b"\xef\xbb\xbfBOM first\n\nthen", ["BOM first", "then"], id="utf-8-bom"),
        pytest.param(
            b"\x93Smart\x94 quotes \x96 and an undefined \x81 byte in a longer line",
            ["\u201cSmart\u201d quotes \u2013 and an undefined \ufffd byte in a longer line"],
            id="cp1252-gap",
        ),
    ],
)
def test_encodings_are_detected_from_the_bytes(
    tmp_path: Path, data: bytes, expected: list[str]
) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes(data)

    assert _texts(path) == expected


def test_small_pieces_keep_multibyte_characters_and_crlf_whole(tmp_path: Path) -> None:
    path = tmp_path / "pieces.txt"
    tail = "A few stray controls\x07 in a long\x7f enough paragraph stay\x1b below the ratio."
    path.write_bytes(f"中文 é 🚀\r\nline two\r\n\r\n{tail}".encode())

    assert _texts(path, ParseLimits(read_size=1)) == [
        "中文 é 🚀\nline two",
        "A few stray controls in a long enough paragraph stay below the ratio.",
    ]


def test_whitespace_only_paragraphs_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n\n \t \n\nonly\n\n   \n\t\n")

    assert _texts(path) == ["only"]


def test_a_next_line_character_ends_a_line_instead_of_joining_two_words(tmp_path: Path) -> None:
    path = tmp_path / "nel.txt"
    path.write_text("first line\u0085second line\u0085\u0085next paragraph", encoding="utf-8")

    assert _texts(path) == ["first line\nsecond line", "next paragraph"]


def test_a_long_paragraph_is_cut_at_sentence_ends(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text("This sentence is short. " * 40)

    texts = _texts(path, ParseLimits(max_block_chars=100))

    assert len(texts) > 5
    assert all(len(text) <= 100 and text.endswith(".") for text in texts)
    assert " ".join(texts) == ("This sentence is short. " * 40).strip()


def test_a_long_run_without_spaces_is_cut_hard(tmp_path: Path) -> None:
    path = tmp_path / "run.txt"
    path.write_text("x" * 250)

    assert [len(text) for text in _texts(path, ParseLimits(max_block_chars=100))] == [100, 100, 50]


def test_random_bytes_named_txt_are_refused_as_binary(tmp_path: Path) -> None:
    path = tmp_path / "random.txt"
    path.write_bytes(os.urandom(20_000))

    with pytest.raises(CorruptDocument, match="binary data"):
        _texts(path)


def test_binary_after_good_text_fails_while_iterating(tmp_path: Path) -> None:
    path = tmp_path / "tail.txt"
    path.write_bytes(b"good paragraph\n\n" * 10 + os.urandom(4096))
    blocks = parse(path, "text/plain", ParseLimits(read_size=64))

    assert next(blocks).text == "good paragraph"
    with pytest.raises(CorruptDocument) as caught:
        list(blocks)
    assert caught.value.reason == "The file looks like binary data, not text."


_ENGLISH = (
    "The harbour was calm and the crew slept on deck under the lanterns. " * 15 + "\n\n"
) * 70


@pytest.mark.parametrize(
    "french",
    [
        "Le garçon a mangé une crème brûlée.",
        # Dense enough in accents that, read as UTF-8, the U+FFFDs would look like binary.
        "Le garçon a mangé une crème brûlée à côté de l'église où été créée la fête.",
    ],
)
def test_legacy_text_whose_first_accent_lies_past_the_head_keeps_its_accents(
    tmp_path: Path, french: str
) -> None:
    """The encoding is judged from the first read (all ASCII here): the first byte that is not
    UTF-8 switches the rest of the file to cp1252."""
    assert len(_ENGLISH) > ParseLimits().read_size
    path = tmp_path / "long.txt"
    path.write_bytes(_ENGLISH.encode("ascii") + (french + "\n\n").encode("cp1252") * 40)

    texts = _texts(path)
    assert texts[-40:] == [french] * 40


def test_utf8_text_with_one_damaged_byte_past_the_head_stays_utf8(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    tail = "Déjà vu, naïve café, señor, Zürich.\n\n" * 40
    path.write_bytes(_ENGLISH.encode("ascii") + b"\xff" + tail.encode("utf-8"))

    texts = _texts(path)
    assert texts[-39:] == ["Déjà vu, naïve café, señor, Zürich."] * 39
    assert texts[-40] == "\ufffdDéjà vu, naïve café, señor, Zürich."
