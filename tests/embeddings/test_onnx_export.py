"""The graph builder: what it refuses, and the smoothing that must not change fp32 results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from mainsail.embeddings.local import model_dir
from mainsail.embeddings.onnx_export import (
    ATTENTION_MASK,
    DISABLED_OPTIMIZERS,
    INPUT_IDS,
    BertConfig,
    ModelBuildError,
    build_graph,
    site_names,
)
from mainsail.embeddings.quantize import smoothing_scales


def run(model_bytes: bytes, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        model_bytes,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )
    return np.asarray(session.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])


def test_smoothing_leaves_the_fp32_function_unchanged() -> None:
    source = model_dir()
    sites = site_names(BertConfig.read(source))
    rng = np.random.default_rng(7)
    smoothing = {
        site: rng.uniform(0.25, 4.0, size=384 if "ffn2" not in site else 1536) for site in sites
    }
    smoothing = {site: scale.astype(np.float32) for site, scale in smoothing.items()}
    ids = rng.integers(1000, 30000, size=(3, 12)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # a padded row too
    plain = run(build_graph(source).SerializeToString(), ids, mask)
    smoothed = run(build_graph(source, smoothing=smoothing).SerializeToString(), ids, mask)
    assert np.abs(plain - smoothed).max() < 1e-5
    assert not np.allclose(plain[0], plain[1])


def test_smoothing_scales_shrink_only_outlier_channels() -> None:
    peaks = np.array([1.0, 2.0, 2.0, 2.0, 3.0, 32.0])  # median 2
    (scale,) = smoothing_scales({"layer0.ffn1": peaks}).values()
    assert scale.dtype == np.float32
    assert np.allclose(scale, [1.0, 1.0, 1.0, 1.0, np.sqrt(1.5), 4.0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_act", "relu", "exact GELU"),
        ("model_type", "roberta", "BERT"),
        ("position_embedding_type", "relative_key", "absolute"),
    ],
)
def test_unsupported_architectures_are_refused(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    source = model_dir()
    shutil.copytree(source / "1_Pooling", tmp_path / "1_Pooling")
    config = json.loads((source / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelBuildError, match=message):
        BertConfig.read(tmp_path)


def test_pooling_other_than_mean_is_refused(tmp_path: Path) -> None:
    source = model_dir()
    shutil.copy(source / "config.json", tmp_path / "config.json")
    (tmp_path / "1_Pooling").mkdir()
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelBuildError, match="mean pooling"):
        BertConfig.read(tmp_path)
