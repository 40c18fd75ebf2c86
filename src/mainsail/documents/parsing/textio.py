"""Reading text files in bounded pieces: encoding, cleaning, binary detection, cutting.

Everything here works on one piece at a time, so memory stays bounded by the piece size
whatever the file size.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from mainsail.documents.parsing.model import CorruptDocument, ParseLimits

# C0 controls except tab and newline, DEL and C1 controls are dropped; other line breaks
# become newlines. Carriage returns are handled before, as CRLF must become one newline.
_CLEAN: dict[int, int | str | None] = dict.fromkeys(
    (*range(0x20), 0x7F, *range(0x80, 0xA0), 0xFEFF)
)
_CLEAN |= {ord("\t"): ord("\t"), ord("\n"): ord("\n")}
_CLEAN |= {ord("\f"): ord("\n"), ord("\v"): ord("\n"), 0x2028: ord("\n"), 0x2029: ord("\n")}
_CLEAN |= {0x85: ord("\n")}  # NEL, the line end of EBCDIC-born text
# Soft hyphens (HTML's ``&shy;``) are hints for breaking a line, not text: inside a word they
# would make it a word nobody searches for. Typographic ligatures (PDF text layers give "ﬁ")
# are their letters, for the same reason; other compatibility forms (², full-width letters)
# are kept as written.
_CLEAN |= {0xAD: None}
_CLEAN |= {0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl"}
_CLEAN |= {0xFB05: "st", 0xFB06: "st"}

# What counts against a piece of text: controls no text file uses, and undecodable bytes.
_CONTROLS = tuple(chr(code) for code in (*range(1, 0x20), 0x7F) if chr(code) not in "\t\n\r\f\v")
_BINARY_RATIO = 0.05
BINARY_REASON = "The file looks like binary data, not text."

_SENTENCE_ENDS = (". ", "! ", "? ", ".\t", "\u3002", "\uff01", "\uff1f", "; ")  # incl. CJK
_SPACES = (" ", "\t", "\u00a0", "\u3000")


def detect_encoding(head: bytes) -> str | None:
    """The codec for a text file from its first bytes, or None when it cannot be text.

    BOMs win; then UTF-8 (a multi-byte character cut at the end of the head is fine); then
    cp1252 for legacy files, which never contain NUL bytes.
    """
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if b"\x00" in head:
        return None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8-sig"


def looks_binary(text: str) -> bool:
    """True when ``text`` (a decoded sample) has the control-character profile of binary data."""
    return "\x00" in text or _suspects(text) > _BINARY_RATIO * len(text)


def mostly_undecodable(text: str) -> bool:
    """True when ``text`` fails on undecodable bytes rather than on controls: a text file in a
    legacy encoding we do not guess (Shift-JIS, GBK...), not binary data."""
    return "\x00" not in text and _controls(text) <= _BINARY_RATIO / 5 * len(text)


def _controls(text: str) -> int:
    return sum(text.count(char) for char in _CONTROLS)


def _suspects(text: str) -> int:
    return _controls(text) + text.count("\ufffd")


class _BinaryGuard:
    """Judges decoded text by windows of a few KiB, so tiny pieces are not judged alone."""

    WINDOW = 4096

    def __init__(self) -> None:
        self.chars = 0
        self.suspects = 0
        self.judged = False

    def check(self, text: str, *, final: bool) -> None:
        if "\x00" in text:
            raise CorruptDocument(BINARY_REASON)
        self.chars += len(text)
        self.suspects += _suspects(text)
        if self.chars >= self.WINDOW or (final and not self.judged and self.chars):
            if self.suspects > _BINARY_RATIO * self.chars:
                raise CorruptDocument(BINARY_REASON)
            self.chars = self.suspects = 0
            self.judged = True


def clean(text: str) -> str:
    """Newlines normalized, controls dropped (tab and newline kept)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").translate(_CLEAN)


def read_pieces(path: Path, *, encoding: str, read_size: int) -> Iterator[str]:
    """The file decoded in pieces of about ``read_size`` bytes, cleaned, binary refused.

    A CR at the end of a piece is held back so that a CRLF split across pieces stays one
    newline.
    """
    decoder = _Utf8OrCp1252() if encoding == "utf-8-sig" else _decoder(encoding)
    guard = _BinaryGuard()
    held_cr = ""
    with path.open("rb") as file:
        while True:
            chunk = file.read(read_size)
            piece = decoder.decode(chunk, final=not chunk)
            guard.check(piece, final=not chunk)
            piece = held_cr + piece
            held_cr = ""
            if chunk and piece.endswith("\r"):
                piece, held_cr = piece[:-1], "\r"
            if piece:
                yield clean(piece)
            if not chunk:
                return


def _decoder(encoding: str, errors: str = "replace") -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder(encoding)(errors=errors)


class _Utf8OrCp1252:
    """UTF-8 until the bytes say otherwise, for a file whose head was all ASCII (or valid
    UTF-8): only the head was judged, and a legacy file's first accent may lie past it.

    A byte that is not UTF-8 before any real UTF-8 character was read switches the rest of the
    file to cp1252, unless that piece holds more valid UTF-8 characters than broken ones (a
    UTF-8 file with a damaged byte). Once settled, broken bytes become U+FFFD as usual.
    """

    def __init__(self) -> None:
        self._decoder = _decoder("utf-8-sig", "strict")
        self._settled = False

    def decode(self, chunk: bytes, final: bool = False) -> str:
        if self._settled:
            return self._decoder.decode(chunk, final)
        if chunk.startswith(codecs.BOM_UTF8):  # the BOM says UTF-8 (only the first chunk can)
            self._settle()
        pending = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            utf8 = _decoder("utf-8")
            text = utf8.decode(pending + chunk, final)
            broken = text.count("\ufffd")
            before = (pending + chunk)[: exc.start]  # valid UTF-8 up to the broken byte
            if not before.isascii() or sum(not char.isascii() for char in text) > 2 * broken:
                self._decoder = utf8
            else:
                self._decoder = _decoder("cp1252")
                text = self._decoder.decode(pending + chunk, final)
            self._settled = True
            return text
        if not text.isascii():
            self._settle()
        return text

    def _settle(self) -> None:
        self._decoder.errors = "replace"
        self._settled = True


def open_text(path: Path, limits: ParseLimits) -> Iterator[str]:
    """The decoded, cleaned pieces of a text file whose encoding is found from its head."""
    encoding = detect_encoding(read_head(path, limits.read_size))
    if encoding is None:
        raise CorruptDocument(BINARY_REASON)
    return read_pieces(path, encoding=encoding, read_size=limits.read_size)


def read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


def best_cut(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``) so that the first piece fits.

    Prefers, in the second half of the allowed span, a line break, then a sentence end, then
    any whitespace; cuts hard at ``limit`` when the text has none of them.
    """
    low = limit // 2
    cut = text.rfind("\n", low, limit)
    if cut > 0:
        return cut + 1
    cut = max(text.rfind(end, low, limit) + len(end) for end in _SENTENCE_ENDS)
    if cut > low:
        return cut
    cut = max(text.rfind(space, low, limit) for space in _SPACES)
    return cut + 1 if cut > 0 else limit


def word_end(text: str, *, limit: int) -> int:
    """Where to cut ``text``, a block over ``limit`` characters still being read, so that the
    part before holds whole words: before the word it ends in, which the next piece read may
    finish (a block cut inside it would hold half a word).

    ``len(text)`` when the text ends in whitespace or is one word. Looks back at most
    ``min(1000, limit // 2)`` characters: a longer "word" is cut hard anyway.
    """
    index = len(text)
    bound = max(0, index - min(1_000, limit // 2))
    while index > bound and not text[index - 1].isspace():
        index -= 1
    return index or len(text)


def cut_pieces(text: str, limit: int) -> Iterator[str]:
    """``text`` stripped, in pieces of at most ``limit`` characters, empty pieces dropped."""
    text = text.strip()
    while len(text) > limit:
        cut = best_cut(text, limit)
        piece = text[:cut].strip()
        if piece:
            yield piece
        text = text[cut:].lstrip()
    if text:
        yield text
