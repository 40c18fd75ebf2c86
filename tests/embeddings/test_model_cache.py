"""The build-once cache: reuse, damage, partial writes, and keys that follow the inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mainsail.embeddings import model_cache
from mainsail.embeddings.local import LocalEmbedder, model_dir
from mainsail.embeddings.model_cache import cache_key, ensure_model, is_intact
from tests.fixtures.logs import CapturedLogs


@pytest.fixture(scope="module")
def fp32_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of its own (tests here damage files), with the fp32 graph built once."""
    cache = tmp_path_factory.mktemp("cache")
    ensure_model(model_dir(), cache, precision="fp32")
    return cache


def builds(logs: CapturedLogs) -> list[str]:
    return [e["path"] for e in logs.events if e["event"] == "embedding model build"]


def test_second_load_reuses_the_cached_file(fp32_cache: Path, logs: CapturedLogs) -> None:
    first = ensure_model(model_dir(), fp32_cache, precision="fp32")
    mtime = first.stat().st_mtime_ns
    second = ensure_model(model_dir(), fp32_cache, precision="fp32")
    assert second == first
    assert second.stat().st_mtime_ns == mtime
    assert builds(logs) == []
    assert sorted(p.suffix for p in fp32_cache.glob("encoder-*")) == [".json", ".onnx"]


def test_damaged_file_is_detected_and_rebuilt(fp32_cache: Path, logs: CapturedLogs) -> None:
    path = ensure_model(model_dir(), fp32_cache, precision="fp32")
    size = path.stat().st_size
    with path.open("r+b") as damaged:  # flip bytes in the middle of the weights
        damaged.seek(size // 2)
        damaged.write(b"\xff" * 64)
    assert not is_intact(path)

    rebuilt = ensure_model(model_dir(), fp32_cache, precision="fp32")
    assert rebuilt == path
    assert is_intact(rebuilt)
    assert rebuilt.stat().st_size == size
    assert builds(logs) == [str(path)]
    assert any(e["event"] == "embedding model cache damaged; rebuilding" for e in logs.events)


def test_truncated_file_is_rebuilt_and_loads(fp32_cache: Path, logs: CapturedLogs) -> None:
    path = ensure_model(model_dir(), fp32_cache, precision="fp32")
    with path.open("r+b") as damaged:
        damaged.truncate(1000)
    embedder = LocalEmbedder.open(model_dir(), fp32_cache, precision="fp32")
    assert embedder.embed(["still works"]).shape == (1, 384)
    assert builds(logs) == [str(path)]


def test_file_without_sidecar_is_rebuilt(fp32_cache: Path, logs: CapturedLogs) -> None:
    """A crash between writing the graph and its sidecar leaves a file that is not trusted."""
    path = ensure_model(model_dir(), fp32_cache, precision="fp32")
    path.with_suffix(".json").unlink()
    assert ensure_model(model_dir(), fp32_cache, precision="fp32") == path
    assert builds(logs) == [str(path)]


def test_new_builder_version_builds_a_new_file_and_removes_the_old(
    fp32_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ensure_model(model_dir(), fp32_cache, precision="fp32")
    monkeypatch.setattr(model_cache, "BUILDER_VERSION", "test-next")
    new = ensure_model(model_dir(), fp32_cache, precision="fp32")
    assert new != old
    assert is_intact(new)
    assert not old.exists()
    assert not old.with_suffix(".json").exists()
    monkeypatch.undo()
    assert ensure_model(model_dir(), fp32_cache, precision="fp32") == old  # and back


def test_key_follows_the_source_files_and_the_variant(tmp_path: Path) -> None:
    source = model_dir()
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (copy / name).symlink_to(source / name)
    shutil.copytree(source / "1_Pooling", copy / "1_Pooling")
    config = (source / "config.json").read_text()
    (copy / "config.json").write_text(config)
    assert cache_key(copy, "fp32") == cache_key(source, "fp32")
    assert cache_key(source, "int8") != cache_key(source, "fp32")

    (copy / "config.json").write_text(
        config.replace('"layer_norm_eps": 1e-12', '"layer_norm_eps": 1e-6')
    )
    assert cache_key(copy, "fp32") != cache_key(source, "fp32")
