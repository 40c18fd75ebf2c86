"""Build each encoder variant once and keep it in a cache directory.

The file name carries a key: a hash of the source files, the builder version, the variant and
the ONNX Runtime version (its quantizer writes the int8 graph). New weights, a changed builder
or an upgraded runtime therefore make a new file, and the old files of that variant are
removed. A sidecar ``.json`` records the file's sha256, so a damaged file is detected on load
and rebuilt. Both are written to a temporary name and renamed into place (the sidecar last: no
sidecar, no valid file), and a lock file keeps two processes from building the same file at
once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import onnx
import onnxruntime

from mainsail.core.logging import get_logger
from mainsail.embeddings.onnx_export import BUILDER_VERSION, OPSET, SOURCE_FILES, build_graph
from mainsail.embeddings.quantize import build_int8, calibration_texts, needs_reduced_range

log = get_logger("mainsail.embeddings")

# "int8" is smoothed int8 (the default); "int8-plain" skips smoothing (kept for comparison).
Precision = Literal["fp32", "int8", "int8-plain"]


def source_digest(model_dir: Path, precision: Precision) -> str:
    """sha256 over the files a variant is built from."""
    digest = hashlib.sha256()
    for relative in SOURCE_FILES:
        digest.update(relative.encode() + b"\0")
        digest.update(_file_sha256(model_dir / relative).encode())
    if precision == "int8":
        digest.update("\n".join(calibration_texts()).encode())
    return digest.hexdigest()


def cache_key(model_dir: Path, precision: Precision) -> str:
    recipe = f"builder {BUILDER_VERSION}|{precision}|opset {OPSET}|ort {onnxruntime.__version__}"
    if precision != "fp32" and needs_reduced_range():  # 7-bit weights: another file
        recipe += "|reduce_range"
    return hashlib.sha256(f"{source_digest(model_dir, precision)}|{recipe}".encode()).hexdigest()


def ensure_model(
    model_dir: Path, cache_dir: Path, *, precision: Precision, stem: str = "encoder"
) -> Path:
    """The cached graph for ``precision``: built if absent or damaged, reused otherwise."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(model_dir, precision)
    path = cache_dir / f"{stem}-{precision}-{key[:16]}.onnx"
    if is_intact(path):
        return path
    with _exclusive(cache_dir / f".{path.name}.lock"):
        if not is_intact(path, warn=False):  # another process may have built it meanwhile
            log.info("embedding model build", path=str(path), precision=precision)
            _build(model_dir, path, precision=precision, key=key)
    _remove_stale(cache_dir, keep=path, pattern=f"{stem}-{precision}-{'?' * 16}.onnx")
    return path


def is_intact(path: Path, *, warn: bool = True) -> bool:
    """True when ``path`` and its sidecar exist and the file's sha256 is the one recorded."""
    try:
        recorded = json.loads(_sidecar(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    try:
        actual = _file_sha256(path)
    except OSError:
        return False
    if actual != recorded:
        if warn:
            log.warning("embedding model cache damaged; rebuilding", path=str(path))
        return False
    return True


def _build(model_dir: Path, path: Path, *, precision: Precision, key: str) -> None:
    _sidecar(path).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as work:
        built = Path(work) / "model.onnx"
        if precision == "fp32":
            onnx.save_model(build_graph(model_dir), built)
        else:
            build_int8(
                model_dir,
                built,
                smooth=precision == "int8",
                reduce_range=needs_reduced_range(),
            )
        with built.open("rb+") as out:
            os.fsync(out.fileno())
        sha256 = _file_sha256(built)
        os.replace(built, path)
    sidecar = {
        "sha256": sha256,
        "precision": precision,
        "key": key,
        "builder_version": BUILDER_VERSION,
        "onnxruntime": onnxruntime.__version__,
    }
    _write_atomically(_sidecar(path), json.dumps(sidecar, indent=2).encode())


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # like the graph beside it, not mkstemp's 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale(cache_dir: Path, *, keep: Path, pattern: str) -> None:
    for stale in cache_dir.glob(pattern):
        if stale != keep:
            with contextlib.suppress(OSError):
                stale.unlink()
                _sidecar(stale).unlink(missing_ok=True)
                (cache_dir / f".{stale.name}.lock").unlink(missing_ok=True)
