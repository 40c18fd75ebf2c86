"""Embedders by name, loaded once per process on first use (the model loads in about a
second; the first load on a machine also builds its ONNX graph)."""

from __future__ import annotations

import threading
from pathlib import Path

from mainsail.embeddings.base import Embedder

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSION = 384
LOCAL_MAX_TOKENS = 256


def local_name(*, quantized: bool) -> str:
    return f"{LOCAL_MODEL}@{'int8' if quantized else 'fp32'}"


class Embedders:
    def __init__(self, cache_dir: Path, *, threads: int | None, batch_size: int) -> None:
        self.cache_dir = cache_dir
        self.threads = threads
        self.batch_size = batch_size
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Embedder:
        with self._lock:
            embedder = self._loaded.get(name)
            if embedder is None:
                embedder = self._load(name)
                self._loaded[name] = embedder
            return embedder

    def _load(self, name: str) -> Embedder:
        model, _, precision = name.partition("@")
        if model != LOCAL_MODEL or precision not in ("int8", "fp32"):
            raise LookupError(f"unknown embedder {name!r}")
        from mainsail.embeddings.local import load_local_embedder

        return load_local_embedder(
            self.cache_dir,
            quantized=precision == "int8",
            threads=self.threads,
            batch_size=self.batch_size,
        )
