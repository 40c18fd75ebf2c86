"""One model cache per test session: the fp32 and int8 graphs are built once (a few seconds)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mainsail.embeddings.local import LocalEmbedder, load_local_embedder, model_dir

REFERENCE_FILE = Path(__file__).with_name("reference_embeddings.json")


@dataclass(frozen=True)
class Reference:
    texts: list[str]
    embeddings: np.ndarray


@pytest.fixture(scope="session")
def reference() -> Reference:
    data = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))
    return Reference(data["texts"], np.array(data["embeddings"], dtype=np.float32))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def fp32_embedder(model_cache: Path) -> LocalEmbedder:
    return load_local_embedder(model_cache, quantized=False)


@pytest.fixture(scope="session")
def int8_embedder(model_cache: Path) -> LocalEmbedder:
    return load_local_embedder(model_cache)


@pytest.fixture(scope="session")
def small_batch_fp32_embedder(model_cache: Path, fp32_embedder: LocalEmbedder) -> LocalEmbedder:
    """Batches of 2, so a handful of texts spans several runs (reuses the cached fp32 graph)."""
    return LocalEmbedder.open(model_dir(), model_cache, precision="fp32", batch_size=2)
