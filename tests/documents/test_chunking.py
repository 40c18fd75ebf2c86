"""The chunker: a heading (or a document's title line) travels with the content under it,
and every chunk is still a contiguous span of the extracted text within the token size."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from mainsail.documents.chunking import _CALM, JOINER, SEPARATOR, Chunker, ChunkText, _Spans
from mainsail.documents.parsing import Block, parse, sniff_file
from mainsail.embeddings.local import model_dir
from mainsail.llm.tokens import count_tokens
from tests.documents.conftest import FIXTURES, essay

TITLE = "Microstructural development of human newborn cerebral white matter"
# One paragraph longer than a 40-token chunk: the splitter must cut it by sentences.
BODY = (
    "Diffusion imaging measured the water in the white matter of newborns. "
    "Anisotropy rose with the age of the infant at the time of the scan. "
    "Preterm infants showed lower values than the infants born at term. "
    "The fibres of the corpus callosum were visible before they were myelinated."
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


def chunk_file(
    tmp_path: Path, name: str, content: str, chunker: Chunker
) -> tuple[list[Block], list[ChunkText]]:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    blocks = list(parse(path, sniff_file(path, name)))
    return blocks, list(chunker.chunks(iter(blocks)))


def check_spans(blocks: list[Block], chunks: list[ChunkText], chunker: Chunker) -> None:
    """Each chunk is the extracted text at its offsets, within the size, in ordinal order."""
    text = SEPARATOR.join(block.text for block in blocks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.token_count <= chunker.chunk_size
    assert chunks[0].char_start == 0
    assert chunks[-1].char_end == len(text)
    for before, after in itertools.pairwise(chunks):
        assert before.char_start < after.char_start <= before.char_end + len(SEPARATOR)


def block_spans(blocks: list[Block]) -> Iterator[tuple[int, int, Block]]:
    offset = 0
    for block in blocks:
        yield offset, offset + len(block.text), block
        offset += len(block.text) + len(SEPARATOR)


def heading_only(blocks: list[Block], chunk: ChunkText) -> bool:
    covered = [
        block
        for start, end, block in block_spans(blocks)
        if start < chunk.char_end and chunk.char_start < end
    ]
    return all(block.kind == "heading" for block in covered)


def test_a_markdown_title_travels_with_the_text_under_it(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    chunker = Chunker(tokenizer, chunk_size=40, chunk_overlap=8)

    blocks, chunks = chunk_file(tmp_path, "paper.md", f"# {TITLE}\n\n{BODY}\n", chunker)

    check_spans(blocks, chunks, chunker)
    assert len(chunks) > 1  # the body alone is longer than a chunk
    first = chunks[0]
    assert first.text.startswith(f"{TITLE}\n\nDiffusion imaging measured")
    assert first.heading == (TITLE,)
    assert not any(heading_only(blocks, chunk) for chunk in chunks)


def test_the_title_line_of_a_plain_text_upload_is_not_a_chunk_alone(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    # "title, blank line, text": how the retrieval benchmark (and many users) upload.
    chunker = Chunker(tokenizer, chunk_size=40, chunk_overlap=8)

    blocks, chunks = chunk_file(tmp_path, "paper.txt", f"{TITLE}.\n\n{BODY}", chunker)

    assert [block.kind for block in blocks] == ["paragraph", "paragraph"]
    check_spans(blocks, chunks, chunker)
    assert chunks[0].text.startswith(f"{TITLE}.\n\nDiffusion imaging measured")
    assert all(chunk.text.strip() != f"{TITLE}." for chunk in chunks)


def test_nested_headings_lead_into_their_content_whose_path_the_chunk_takes(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    chunker = Chunker(tokenizer, chunk_size=40, chunk_overlap=8)
    content = f"# Guide\n\n## Install\n\n{BODY}\n\n## Use\n\nOpen the app.\n\n# Empty\n\n# Last\n"

    blocks, chunks = chunk_file(tmp_path, "guide.md", content, chunker)

    check_spans(blocks, chunks, chunker)
    assert chunks[0].text.startswith("Guide\n\nInstall\n\nDiffusion imaging measured")
    assert chunks[0].heading == ("Guide", "Install")
    use = next(chunk for chunk in chunks if chunk.text.startswith("Use"))
    assert (use.text, use.heading) == ("Use\n\nOpen the app.", ("Guide", "Use"))
    # A heading with nothing under it stays a chunk of its own (its section is empty).
    assert [(c.text, c.heading) for c in chunks[-2:]] == [
        ("Empty", ("Empty",)),
        ("Last", ("Last",)),
    ]


def test_a_document_of_headings_alone_still_gets_its_chunks(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    chunker = Chunker(tokenizer, chunk_size=24, chunk_overlap=4)

    blocks, chunks = chunk_file(tmp_path, "toc.md", "# A\n\n## B\n\n# C\n\n## D\n", chunker)

    check_spans(blocks, chunks, chunker)
    assert [(c.text, c.heading) for c in chunks] == [("A\n\nB", ("A",)), ("C\n\nD", ("C",))]


@pytest.mark.parametrize("name", ["sample.md", "sample.html", "sample.docx", "sample.txt"])
@pytest.mark.parametrize(("size", "overlap"), [(16, 4), (40, 10), (200, 30)])
def test_no_sample_has_a_heading_chunk_followed_by_its_content(
    tokenizer: Tokenizer, name: str, size: int, overlap: int
) -> None:
    path = FIXTURES / name
    blocks = list(parse(path, sniff_file(path)))
    chunker = Chunker(tokenizer, chunk_size=size, chunk_overlap=overlap)

    chunks = list(chunker.chunks(iter(blocks)))

    check_spans(blocks, chunks, chunker)
    assert chunks == list(chunker.chunks(iter(blocks)))  # deterministic: re-runs resume
    spans = list(block_spans(blocks))
    for chunk in chunks:
        if heading_only(blocks, chunk):
            following = [block for start, _, block in spans if start >= chunk.char_end]
            assert not following or following[0].kind == "heading", chunk


def test_provider_counts_stay_within_the_size_where_headings_are_joined(tmp_path: Path) -> None:
    # cl100k counts a blank line as a token and spaces differently: the joined view of a
    # heading must never let a chunk go over the size.
    chunker = Chunker(None, chunk_size=24, chunk_overlap=4)
    headings = "\n\n".join(f"## Part {i}\n\n{essay(1, seed=i)}" for i in range(12))

    blocks, chunks = chunk_file(tmp_path, "parts.md", f"# Book\n\n{headings}\n", chunker)

    check_spans(blocks, chunks, chunker)
    assert all(chunk.token_count == count_tokens(chunk.text) for chunk in chunks)
    assert not any(heading_only(blocks, chunk) for chunk in chunks)


def test_short_lines_that_end_sentences_are_not_joined_as_titles(tokenizer: Tokenizer) -> None:
    # Dialogue, not headings: the splitter may still cut between these paragraphs.
    chunker = Chunker(tokenizer, chunk_size=24, chunk_overlap=0)
    lines = ["Opening words of the story go here.", '"Is he married?"', "Yes.", BODY]
    blocks = [Block(line) for line in lines]

    chunks = list(chunker.chunks(iter(blocks)))

    check_spans(blocks, chunks, chunker)
    assert chunker._leads([(0, block) for block in blocks], document_start=False) == set()


# Property tests: random documents of headings (nested paths, some on two lines), title-like
# lines, dialogue-like lines and long paragraphs, cut by both kinds of counting.

WORDS = st.sampled_from(
    [
        "tide",
        "sail",
        "keel",
        "mast",
        "anchor",
        "chart",
        "reef",
        "4.",
        "Is",
        "it",
        "safe?",
        "storm!",
        "calm",
        "x",
        "compass",
        "lantern",
        "\u00e9t\u00e9",
        "\u6d77",
        "\u3002",
    ]
)


@st.composite
def documents(draw: st.DrawFn) -> list[Block]:
    blocks: list[Block] = []
    path: tuple[str, ...] = ()
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["heading", "title", "line", "paragraph", "paragraph"]))
        words = draw(st.lists(WORDS, min_size=1, max_size=6))
        if kind == "heading":
            depth = draw(st.integers(1, min(len(path) + 1, 3)))
            text = " ".join(words)
            if draw(st.booleans()) and len(words) > 1:
                text = text.replace(" ", "\n", 1)  # a heading on two lines
            path = (*path[: depth - 1], text)
            blocks.append(Block(text, heading=path, kind="heading"))
        elif kind == "title":
            title = " ".join(words).rstrip(".!?\u3002,;") or "x"
            blocks.append(Block(title, heading=path))
        elif kind == "line":
            blocks.append(
                Block(" ".join(words) + draw(st.sampled_from([".", "?", '"'])), heading=path)
            )
        else:
            sentences = draw(
                st.lists(st.lists(WORDS, min_size=1, max_size=30), min_size=1, max_size=8)
            )
            text = " ".join(" ".join(s) + "." for s in sentences)
            blocks.append(Block(text, heading=path))
    return blocks


def lead_ins(blocks: list[Block], chunk: ChunkText) -> bool:
    """Whether the chunk holds nothing but headings that lead into content right after it."""
    covered = [
        (start, block)
        for start, end, block in block_spans(blocks)
        if start < chunk.char_end and chunk.char_start < end
    ]
    if not all(block.kind == "heading" for _, block in covered):
        return False
    after = [block for start, _, block in block_spans(blocks) if start >= chunk.char_end]
    last = covered[-1][1]
    return bool(after) and after[0].kind != "heading" and after[0].heading == last.heading


@pytest.fixture(scope="module")
def chunkers(tokenizer: Tokenizer) -> list[tuple[Chunker, int, int]]:
    """(chunker, size, overlap) for both kinds of counting."""
    return [
        (Chunker(tok, chunk_size=size, chunk_overlap=overlap), size, overlap)
        for tok in (tokenizer, None)
        for size, overlap in ((16, 0), (16, 5), (40, 10))
    ]


@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=documents(), which=st.integers(0, 5))
def test_chunks_are_spans_of_the_text_within_the_size(
    chunkers: list[tuple[Chunker, int, int]], blocks: list[Block], which: int
) -> None:
    chunker, size, overlap = chunkers[which]
    chunks = list(chunker.chunks(iter(blocks)))
    text = SEPARATOR.join(block.text for block in blocks)

    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    covered = 0
    for chunk in chunks:
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.text
        assert chunk.text == chunk.text.strip()
        assert chunk.token_count == chunker._counts([chunk.text])[0]
        assert chunk.token_count <= size
        if chunker.tokenizer is None:
            assert chunk.token_ids is None
        else:  # the word pieces the text has alone, which the embedder reads
            alone = chunker.tokenizer.encode(chunk.text, add_special_tokens=False).ids
            assert chunk.token_ids is not None
            assert chunk.token_ids.tolist() == alone
            assert chunk.token_ids.base is None  # its own, not a view of the section's ids
        assert text[covered : chunk.char_start].strip() == ""  # nothing left out
        covered = max(covered, chunk.char_end)
    assert text[covered:].strip() == ""
    for before, after in itertools.pairwise(chunks):
        assert before.char_start < after.char_start
        if after.char_start < before.char_end:  # overlap, within the setting
            shared = text[after.char_start : before.char_end]
            assert overlap > 0
            assert chunker._counts([shared])[0] <= overlap
    assert not any(lead_ins(blocks, chunk) for chunk in chunks)


@pytest.mark.parametrize("counting", ["local", "cl100k"])
def test_sections_stay_within_the_window_and_are_split_a_few_times(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, counting: str
) -> None:
    # Long runs of headings and title lines, and paragraphs: every window boundary lands
    # somewhere a heading or title line would take the next block along.
    chunker = Chunker(
        tokenizer if counting == "local" else None,
        chunk_size=16,
        chunk_overlap=4,
        window_chars=256,
    )
    blocks: list[Block] = []
    for i in range(60):
        path = (f"Part {i // 10}",)
        if i % 10 == 0:
            blocks.append(Block(path[0], heading=path, kind="heading"))
        blocks += [Block(f"Note {i} {j}", heading=path) for j in range(i % 4)]
        blocks.append(Block(essay(1, seed=i), heading=path))
    calls: list[int] = []
    sizes: list[int] = []
    split = chunker._split
    cut = chunker._indices

    def spy(section: list[tuple[int, Block]], first: int) -> Iterator[ChunkText]:
        calls.append(0)
        sizes.append(sum(len(block.text) + len(SEPARATOR) for _, block in section))
        return split(section, first)

    def counting(*args: Any) -> list[tuple[int, str]]:
        calls[-1] += 1  # one splitter run
        return cut(*args)

    monkeypatch.setattr(chunker, "_split", spy)
    monkeypatch.setattr(chunker, "_indices", counting)

    chunks = list(chunker.chunks(iter(blocks)))

    check_spans(blocks, chunks, chunker)
    longest = max(len(block.text) + len(SEPARATOR) for block in blocks)
    assert max(sizes) <= chunker.window_chars + longest
    assert max(calls) <= 4
    assert not any(heading_only(blocks, chunk) for chunk in chunks)


# Words, pieces of words and characters the model's normalizer rewrites or drops: accents,
# CJK (split per character), emoji (unknown), control characters, long unknown words.
PIECES = [
    "the",
    "white",
    "matter",
    "anisotropy",
    "myelinated",
    "naïve",
    "Café",
    "résumé",
    "fibres.",
    "(scan)",
    "don't",
    "U.S.",
    "3.14",
    "—",
    "東京大学",
    "😀",
    "\x00",
    "\u200b",
    "x" * 120,
    "\n",
    "\n\n",
    " ",
    "  ",
    "\t",
]


def test_a_word_too_long_for_the_tokenizer_still_counts_by_its_length(
    tokenizer: Tokenizer,
) -> None:
    """WordPiece reads a word of over 100 characters (a hex dump) as one [UNK]: counted as
    one token, a whole such blob became one chunk of 100,000 characters."""
    blob = "".join(f"{i * 2654435761 % 2**32:08x}" for i in range(500))  # 4,000 characters
    text = f"{essay(1)}\n\n{blob}\n\n{essay(1, seed=2)}"
    chunker = Chunker(tokenizer, chunk_size=64, chunk_overlap=8)
    assert chunker.tokenizer is not None
    spans = _Spans(chunker.tokenizer, text)
    start = text.index(blob)
    assert spans.count(start, start + len(blob)) == math.ceil(len(blob) / 1.5)
    assert spans(blob[:1000]) == math.ceil(1000 / 1.5)  # a stretch of it, counted alone
    chunks = list(chunker.chunks(iter([Block(text=text)])))
    assert all(chunk.token_count <= 64 for chunk in chunks)
    assert all(chunk.token_count == chunker._counts([chunk.text])[0] for chunk in chunks)
    inside = [chunk for chunk in chunks if chunk.text in blob]
    assert len(inside) >= len(blob) // 150  # the blob is cut into many chunks
    assert max(len(chunk.text) for chunk in inside) < 150
    covered = sorted((c.char_start, c.char_end) for c in chunks)
    end = covered[0][1]
    for a, b in covered[1:]:
        assert text[end:a].strip() == ""  # no gap but whitespace: all of it is kept
        end = max(end, b)
    assert end == len(text)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.sampled_from(PIECES), min_size=1, max_size=60),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), max_size=20),
)
def test_span_counts_equal_the_tokenizer_on_the_stretch_alone(
    tokenizer: Tokenizer, words: list[str], cuts: list[tuple[int, int]]
) -> None:
    text = " ".join(words)
    chunker = Chunker(tokenizer, chunk_size=16, chunk_overlap=4)
    assert chunker.tokenizer is not None
    spans = _Spans(chunker.tokenizer, text)
    for a, b in [(0, len(text)), *cuts]:
        start, end = sorted((a % (len(text) + 1), b % (len(text) + 1)))
        # As the chunker counts a text alone: a word too long to read counts by its length.
        alone = chunker._counts([text[start:end]])[0]
        assert spans.count(start, end) == alone
        assert spans(text[start:end]) == alone
        pieces = chunker.tokenizer.encode(text[start:end], add_special_tokens=False).ids
        assert spans.token_ids(start, end).tolist() == pieces


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    words=st.lists(
        st.sampled_from([*PIECES, "end.", "Why? Yes!", "\u3002", "\uff01", "\uff1f"]), max_size=60
    ),
    calm=st.lists(st.booleans(), min_size=60, max_size=60),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), max_size=20),
)
def test_the_joined_view_counts_from_the_text_encoding(
    tokenizer: Tokenizer, words: list[str], calm: list[bool], cuts: list[tuple[int, int]]
) -> None:
    # The view the splitter is shown: some words' sentence ends and line breaks calmed, and
    # blank lines turned into spaces, one character for one.
    text = " ".join(words)
    view = " ".join(
        w.translate(_CALM).replace(SEPARATOR, JOINER) if c else w
        for w, c in zip(words, calm, strict=False)
    )
    assert len(view) == len(text)
    chunker = Chunker(tokenizer, chunk_size=16, chunk_overlap=4)
    assert chunker.tokenizer is not None
    assert chunker._views_alike
    spans = _Spans(chunker.tokenizer, text).view(view)
    for a, b in [(0, len(text)), *cuts]:
        start, end = sorted((a % (len(text) + 1), b % (len(text) + 1)))
        alone = chunker._counts([view[start:end]])[0]
        assert spans.count(start, end) == alone
        assert spans(view[start:end]) == alone


@pytest.mark.parametrize(("size", "overlap"), [(16, 4), (40, 8), (200, 30)])
def test_counting_from_one_encoding_cuts_as_the_splitter_own_counting_does(
    tokenizer: Tokenizer, size: int, overlap: int
) -> None:
    chunker = Chunker(tokenizer, chunk_size=size, chunk_overlap=overlap)
    assert chunker.tokenizer is not None
    text = "\n\n".join(essay(8, seed=seed) + " Naïve café — 東京 ☕." for seed in range(6))
    native = TextSplitter.from_huggingface_tokenizer(
        chunker.tokenizer, capacity=size, overlap=overlap
    )
    ours = chunker._indices(text, _Spans(chunker.tokenizer, text), size, overlap)
    assert ours == native.chunk_indices(text)
    assert len(ours) > 3


def test_the_chunker_counts_whole_texts_and_leaves_the_given_tokenizer_as_it_was(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """tokenizer.json truncates at 128 and pads to 128: the chunker counts with a copy that
    does neither; a tokenizer that already does neither (the local embedder's) is used as it
    is, not copied for every document."""
    truncation, padding = tokenizer.truncation, tokenizer.padding
    assert truncation is not None
    assert padding is not None
    chunker = Chunker(tokenizer, chunk_size=400, chunk_overlap=0)
    assert (tokenizer.truncation, tokenizer.padding) == (truncation, padding)
    assert chunker.tokenizer is not tokenizer
    plain = Tokenizer.from_str(tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    text = " ".join([BODY] * 3)  # one paragraph of ~190 tokens: over 128, under 400
    _, chunks = chunk_file(tmp_path, "long.txt", text, chunker)
    whole = len(plain.encode(text, add_special_tokens=False).ids)
    assert [c.token_count for c in chunks] == [whole]
    assert whole > truncation["max_length"]
    assert Chunker(plain, chunk_size=400, chunk_overlap=0).tokenizer is plain


def test_text_the_tokenizer_reads_as_nothing_makes_no_chunk(tokenizer: Tokenizer) -> None:
    """Zero-width characters alone have no word pieces: no chunk (a document of nothing else
    then fails as having no text), and the ordinals of the others stay contiguous."""
    chunker = Chunker(tokenizer, chunk_size=8, chunk_overlap=0)
    assert list(chunker.chunks([Block("\u200b\u200c\u2060")])) == []
    blocks = [Block("A first paragraph of text here."), Block("\u200b" * 40), Block("The end.")]
    chunks = list(chunker.chunks(blocks))
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    assert all(chunk.token_count > 0 for chunk in chunks)
