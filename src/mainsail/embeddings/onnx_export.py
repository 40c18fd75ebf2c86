"""Build an ONNX Runtime graph of a BERT sentence encoder from its safetensors weights.

No torch: the graph is written node by node with the ``onnx`` helper API. It uses ONNX
Runtime's fused CPU kernels where they are fast (``com.microsoft`` EmbedLayerNormalization,
Attention, Gelu) and plain ONNX ops where the fused kernel is slow (Add + LayerNormalization
instead of SkipLayerNormalization), so nothing depends on a graph optimizer recognising a torch
export. Mean pooling over the attention mask and L2 normalization are part of the graph: one
run maps (input_ids, attention_mask) to finished (batch, hidden) sentence embeddings.

Measured against sentence-transformers on torch (fp32): max abs difference ~6e-7 per component.
Quantization lives in ``mainsail.embeddings.quantize``, the build-once cache in
``mainsail.embeddings.model_cache``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

# Bump when the graph or the quantization recipe changes: cached files then rebuild.
BUILDER_VERSION = "1"
OPSET = 17
MS_DOMAIN = "com.microsoft"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT = "sentence_embedding"

# ONNX Runtime graph fusions that make this graph slower on CPU (see _dense_residual_norm):
# every session over it passes these as InferenceSession(disabled_optimizers=...).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion", "BiasGeluFusion")

# The files a graph is built from (the cache key hashes them).
SOURCE_FILES = ("model.safetensors", "config.json", "1_Pooling/config.json", "tokenizer.json")


# Per-site channel divisors for SmoothQuant-style smoothing (see mainsail.embeddings.quantize):
# the input of the site's MatMul is divided by s per channel, its weight rows multiplied by s.
Smoothing = Mapping[str, np.ndarray]


class ModelBuildError(Exception):
    """The source model cannot be turned into the graph this module writes."""


@dataclass(frozen=True, slots=True)
class BertConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    intermediate_size: int
    layer_norm_eps: float
    vocab_size: int
    max_positions: int

    @classmethod
    def read(cls, model_dir: Path) -> BertConfig:
        raw = json.loads((model_dir / "config.json").read_text())
        if raw.get("model_type") != "bert" or raw.get("hidden_act") != "gelu":
            raise ModelBuildError(
                f"only BERT encoders with exact GELU are supported, got "
                f"model_type={raw.get('model_type')!r} hidden_act={raw.get('hidden_act')!r}"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelBuildError("only absolute position embeddings are supported")
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(mode)
            for mode in (
                "pooling_mode_cls_token",
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
            )
        ):
            raise ModelBuildError("only mean pooling is supported")
        return cls(
            hidden_size=int(raw["hidden_size"]),
            num_heads=int(raw["num_attention_heads"]),
            num_layers=int(raw["num_hidden_layers"]),
            intermediate_size=int(raw["intermediate_size"]),
            layer_norm_eps=float(raw["layer_norm_eps"]),
            vocab_size=int(raw["vocab_size"]),
            max_positions=int(raw["max_position_embeddings"]),
        )


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


class _GraphBuilder:
    def __init__(self, weights: dict[str, np.ndarray], smoothing: Smoothing) -> None:
        self.weights = weights
        self.smoothing = smoothing
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def weight(self, key: str) -> np.ndarray:
        try:
            return self.weights[key]
        except KeyError:
            raise ModelBuildError(f"weight {key!r} is missing from model.safetensors") from None

    def constant(self, name: str, value: np.ndarray) -> str:
        array = np.ascontiguousarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str],
        *,
        domain: str = "",
        float_shape: list[str | int] | None = None,
        **attributes: Any,
    ) -> list[str]:
        """Add a node; ``float_shape`` declares its first output's type, which ONNX shape
        inference cannot derive through com.microsoft ops and the quantizer needs."""
        self.nodes.append(  # named after its output: unique, and readable in a profile
            helper.make_node(op, inputs, outputs, name=outputs[0], domain=domain, **attributes)
        )
        if float_shape is not None:
            self.value_info.append(
                helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, float_shape)
            )
        return outputs


def site_names(config: BertConfig) -> list[str]:
    """The MatMul inputs smoothing may rescale: per layer, QKV, the FFN's first and second."""
    return [
        f"layer{i}.{site}" for i in range(config.num_layers) for site in ("qkv", "ffn1", "ffn2")
    ]


def site_input(site: str) -> str:
    """The graph tensor a site's MatMul reads (before smoothing)."""
    layer, kind = site.split(".")
    index = int(layer.removeprefix("layer"))
    if kind == "qkv":
        return "embeddings" if index == 0 else f"encoder.layer.{index - 1}.output"
    return f"encoder.layer.{index}.{'attended' if kind == 'ffn1' else 'activated'}"


def build_graph(model_dir: Path, *, smoothing: Smoothing | None = None) -> onnx.ModelProto:
    """The fp32 encoder: (input_ids, attention_mask) int32 -> L2-normalized mean embedding.

    With ``smoothing`` the result is the same function (up to rounding), with the activations
    that feed the listed MatMuls rescaled per channel so that int8 quantizes them well.
    """
    config = BertConfig.read(model_dir)
    g = _GraphBuilder(load_file(str(model_dir / "model.safetensors")), smoothing or {})
    hidden = _embeddings(g, config)
    for layer in range(config.num_layers):
        hidden = _encoder_layer(g, config, layer, hidden)
    _mean_pool_and_normalize(g, hidden.output)

    graph = helper.make_graph(
        g.nodes,
        "sentence_encoder",
        inputs=[
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT32, ["batch", "sequence"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT32, ["batch", "sequence"]),
        ],
        outputs=[
            helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", config.hidden_size])
        ],
        initializer=g.initializers,
        value_info=g.value_info,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="mainsail.embeddings",
        producer_version=BUILDER_VERSION,
    )
    model.ir_version = 8  # ONNX Runtime and its quantizer read IR 8 everywhere
    return model


@dataclass(frozen=True, slots=True)
class _Normed:
    """A LayerNorm's output, and what it takes to emit a channel-scaled copy of it."""

    output: str
    source: str  # the tensor that was normalized
    gamma: np.ndarray
    beta: np.ndarray
    epsilon: float


def _matmul_input(g: _GraphBuilder, site: str, normed: _Normed) -> tuple[str, np.ndarray | None]:
    """The tensor a site's MatMul should read, and the scale its weight rows need.

    A smoothed LayerNorm output is a second LayerNormalization of the same source with gamma
    and beta divided by the scale: the unscaled output still feeds the residual path.
    """
    scale = g.smoothing.get(site)
    if scale is None:
        return normed.output, None
    (scaled,) = g.node(
        "LayerNormalization",
        [
            normed.source,
            g.constant(f"{normed.output}.gamma/s", normed.gamma / scale),
            g.constant(f"{normed.output}.beta/s", normed.beta / scale),
        ],
        [f"{normed.output}/s"],
        float_shape=["batch", "sequence", normed.gamma.shape[0]],
        axis=-1,
        epsilon=normed.epsilon,
    )
    return scaled, scale


def _scaled_rows(weight: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    return weight if scale is None else weight * scale[:, None]


def _embeddings(g: _GraphBuilder, config: BertConfig) -> _Normed:
    # Every token has type 0, so the type-0 row is folded into the word table: the graph then
    # needs no token_type_ids input and EmbedLayerNormalization does one add fewer.
    words = g.weight("embeddings.word_embeddings.weight")
    token_type = g.weight("embeddings.token_type_embeddings.weight")[0]
    word_table = g.constant("word_embeddings", words + token_type)
    positions = g.constant("position_embeddings", g.weight("embeddings.position_embeddings.weight"))
    gamma = g.weight("embeddings.LayerNorm.weight")
    beta = g.weight("embeddings.LayerNorm.bias")
    # The mask input makes the node also emit mask_index: each row's token count, which is what
    # Attention takes for right-padded batches. The third output, the sum before the norm, is
    # only needed when the first layer's QKV input is smoothed.
    outputs = ["embeddings", "mask_index"]
    if "layer0.qkv" in g.smoothing:
        outputs.append("embedding_sum")
    g.node(
        "EmbedLayerNormalization",
        [
            INPUT_IDS,
            "",
            word_table,
            positions,
            "",
            g.constant("embeddings.ln.gamma", gamma),
            g.constant("embeddings.ln.beta", beta),
            ATTENTION_MASK,
        ],
        outputs,
        domain=MS_DOMAIN,
        float_shape=["batch", "sequence", config.hidden_size],
        epsilon=config.layer_norm_eps,
    )
    return _Normed("embeddings", "embedding_sum", gamma, beta, config.layer_norm_eps)


def _encoder_layer(g: _GraphBuilder, config: BertConfig, layer: int, hidden: _Normed) -> _Normed:
    p = f"encoder.layer.{layer}"
    attn = f"{p}.attention"
    wide: list[str | int] = ["batch", "sequence", config.intermediate_size]

    qkv_input, qkv_scale = _matmul_input(g, f"layer{layer}.qkv", hidden)
    qkv = ("query", "key", "value")
    qkv_weight = np.concatenate([g.weight(f"{attn}.self.{x}.weight").T for x in qkv], axis=1)
    qkv_bias = np.concatenate([g.weight(f"{attn}.self.{x}.bias") for x in qkv])
    (context,) = g.node(
        "Attention",
        [
            qkv_input,
            g.constant(f"{attn}.qkv.weight", _scaled_rows(qkv_weight, qkv_scale)),
            g.constant(f"{attn}.qkv.bias", qkv_bias),
            "mask_index",
        ],
        [f"{p}.context"],
        domain=MS_DOMAIN,
        float_shape=["batch", "sequence", config.hidden_size],
        num_heads=config.num_heads,
    )
    attended = _dense_residual_norm(
        g,
        config,
        context,
        dense=f"{attn}.output.dense",
        residual=hidden.output,
        norm=f"{attn}.output.LayerNorm",
        out=f"{p}.attended",
    )

    ffn1_input, ffn1_scale = _matmul_input(g, f"layer{layer}.ffn1", attended)
    (expanded,) = g.node(
        "MatMul",
        [
            ffn1_input,
            g.constant(
                f"{p}.intermediate.dense.weight.T",
                _scaled_rows(g.weight(f"{p}.intermediate.dense.weight").T, ffn1_scale),
            ),
        ],
        [f"{p}.expanded"],
        float_shape=wide,
    )
    (expanded_biased,) = g.node(
        "Add",
        [expanded, g.constant(f"{p}.intermediate.bias", g.weight(f"{p}.intermediate.dense.bias"))],
        [f"{p}.expanded_biased"],
        float_shape=wide,
    )
    (activated,) = g.node(
        "Gelu",  # exact (erf) GELU, as BERT's "gelu"; FastGelu would be the tanh form
        [expanded_biased],
        [f"{p}.activated"],
        domain=MS_DOMAIN,
        float_shape=wide,
    )
    ffn2_scale = g.smoothing.get(f"layer{layer}.ffn2")
    if ffn2_scale is not None:  # GELU is not scale-equivariant: divide explicitly
        (activated,) = g.node(
            "Mul",
            [activated, g.constant(f"{p}.activated.1/s", 1.0 / ffn2_scale)],
            [f"{p}.activated/s"],
            float_shape=wide,
        )
    return _dense_residual_norm(
        g,
        config,
        activated,
        dense=f"{p}.output.dense",
        residual=attended.output,
        norm=f"{p}.output.LayerNorm",
        out=f"{p}.output",
        scale=ffn2_scale,
    )


def _dense_residual_norm(
    g: _GraphBuilder,
    config: BertConfig,
    x: str,
    *,
    dense: str,
    residual: str,
    norm: str,
    out: str,
    scale: np.ndarray | None = None,
) -> _Normed:
    """LayerNorm(x @ W + b + residual), as plain ops.

    Plain MatMul + Add + Add + LayerNormalization rather than SkipLayerNormalization: ONNX
    Runtime's CPU SkipLayerNormalization kernel is scalar code, about 3x slower than Add +
    LayerNormalization, and in the int8 graph the bias Add folds into DynamicQuantizeMatMul.
    The session must then keep ONNX Runtime from fusing them back (``DISABLED_OPTIMIZERS``).
    """
    shape: list[str | int] = ["batch", "sequence", config.hidden_size]
    weight = _scaled_rows(g.weight(f"{dense}.weight").T, scale)
    (projected,) = g.node(
        "MatMul", [x, g.constant(f"{dense}.weight.T", weight)], [f"{out}.dense"], float_shape=shape
    )
    (biased,) = g.node(
        "Add",
        [projected, g.constant(f"{dense}.bias", g.weight(f"{dense}.bias"))],
        [f"{out}.biased"],
        float_shape=shape,
    )
    (summed,) = g.node("Add", [biased, residual], [f"{out}.summed"], float_shape=shape)
    gamma, beta = g.weight(f"{norm}.weight"), g.weight(f"{norm}.bias")
    g.node(
        "LayerNormalization",
        [summed, g.constant(f"{norm}.gamma", gamma), g.constant(f"{norm}.beta", beta)],
        [out],
        float_shape=shape,
        axis=-1,
        epsilon=config.layer_norm_eps,
    )
    return _Normed(out, summed, gamma, beta, config.layer_norm_eps)


def _mean_pool_and_normalize(g: _GraphBuilder, hidden: str) -> None:
    """sentence-transformers' Pooling(mean) then Normalize, with the same epsilons."""
    (mask,) = g.node("Cast", [ATTENTION_MASK], ["mask_f"], to=TensorProto.FLOAT)
    (mask3,) = g.node("Unsqueeze", [mask, g.constant("axis_2", np.array([2]))], ["mask_3d"])
    (masked,) = g.node("Mul", [hidden, mask3], ["masked_hidden"])
    axis_1 = g.constant("axis_1", np.array([1]))
    (summed,) = g.node("ReduceSum", [masked, axis_1], ["summed"], keepdims=0)
    (counted,) = g.node("ReduceSum", [mask, axis_1], ["counted"], keepdims=1)
    min_count = g.constant("min_count", np.array(1e-9, np.float32))
    (count,) = g.node("Max", [counted, min_count], ["count"])
    (mean,) = g.node("Div", [summed, count], ["mean"])
    (length,) = g.node("ReduceL2", [mean], ["length"], axes=[1], keepdims=1)
    min_length = g.constant("min_length", np.array(1e-12, np.float32))
    (safe_length,) = g.node("Max", [length, min_length], ["safe_length"])
    g.node("Div", [mean, safe_length], [OUTPUT])
