"""PDF: the text layer page by page, paragraphs guessed from the layout; bad files refused."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pypdf import PdfReader, PdfWriter

from mainsail.documents.parsing import Block, CorruptDocument, LimitExceeded, ParseLimits, parse
from tests.documents.fixtures.make_fixtures import pdf_bytes

FIXTURES = Path(__file__).parents[1] / "fixtures"
SAMPLE = FIXTURES / "sample.pdf"


def _parse(path: Path, limits: ParseLimits = ParseLimits()) -> list[Block]:
    return list(parse(path, "application/pdf", limits))


def _encrypted(tmp_path: Path, *, user_password: str) -> Path:
    writer = PdfWriter(clone_from=PdfReader(SAMPLE))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
    out = BytesIO()
    writer.write(out)
    path = tmp_path / "locked.pdf"
    path.write_bytes(out.getvalue())
    return path


def test_sample_pdf_parses_into_paragraphs_with_page_numbers() -> None:
    assert _parse(SAMPLE) == [
        Block("Mainsail guide", page=1),
        Block(
            "Mainsail is a small AI backend. It stores documents and answers questions about\n"
            "them with citations, keeps every answer close to its sources, and runs well on\n"
            "a laptop. Café owners in 中文 cities love it 🚀.",
            page=1,
        ),
        Block("Install", page=1),
        Block(
            "Run the installer and follow the prompts on the screen until it finishes; the\n"
            "service starts by itself.",
            page=1,
        ),
        Block("Reference", page=2),
        Block("Name | Value", page=2),
        Block("timeout | 30 s", page=2),
        Block(
            "Every setting can also be given in the environment, which is how containers are\n"
            "usually configured.",
            page=2,
        ),
    ]


def test_an_encrypted_pdf_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = _encrypted(tmp_path, user_password="secret")

    with pytest.raises(CorruptDocument) as caught:
        _parse(path)
    assert "encrypted" in caught.value.reason


def test_a_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path: Path) -> None:
    path = _encrypted(tmp_path, user_password="")

    assert _parse(path)[0] == Block("Mainsail guide", page=1)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:9] + b"\x00garbage" * 200, id="garbage"),
        pytest.param(lambda data: b"%PDF-1.4\n%%EOF\n", id="empty"),
    ],
)
def test_a_damaged_pdf_is_refused(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(damage(SAMPLE.read_bytes()))

    with pytest.raises(CorruptDocument, match="damaged"):
        _parse(path)


def test_a_pdf_whose_every_page_uses_an_unknown_filter_is_refused(tmp_path: Path) -> None:
    """pypdf raises NotImplementedError for a stream filter it does not know."""
    path = tmp_path / "odd.pdf"
    data = pdf_bytes([["Hello page one"], ["Page two"]], compress=False)
    path.write_bytes(data.replace(b"<< /Length", b"<< /Filter /FooDecode /Length"))

    with pytest.raises(CorruptDocument, match="damaged"):
        _parse(path)


def test_a_pdf_with_too_many_pages_is_refused_before_reading_them(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    path.write_bytes(pdf_bytes([[f"page {number}"] for number in range(5)]))

    with pytest.raises(LimitExceeded, match="5 pages"):
        _parse(path, ParseLimits(max_pages=4))
    assert [block.page for block in _parse(path, ParseLimits(max_pages=5))] == [1, 2, 3, 4, 5]
