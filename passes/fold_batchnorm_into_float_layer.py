"""Fold an inference BatchNormalization after a float Conv/Gemm/MatMul into its weights and bias.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = f * y + (beta - f * mean), f = gamma / sqrt(var + eps),
per channel (axis 1). With y = W * x + b:  W' = W * f (per output channel), b' = (b - mean) * f + beta.
* Conv: W [Cout, Cin/g, kh, kw] scales along axis 0; the bias input is added if absent.
* Gemm: y = alpha * A' B' + beta_g * C; the columns of B' scale by f and C' = (beta_g * C - mean) * f + beta
  with beta_g set to 1.
* MatMul with a constant 2D weight and a rank-2 output becomes Gemm(A, W * f, (0 - mean) * f + beta).
The factors are computed in float64 and stored in the weight dtype. Only standard-domain layers
match (binary layers are bnnc ops by the time this runs). Non-constant weights or BN parameters,
a layer output read elsewhere, or BN in training mode: not folded, with a reason.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper

from bnnc.graph import Graph, attrs_of
from bnnc.pipeline import Pass, PassResult

LAYERS = ("Conv", "Gemm", "MatMul")


def match(graph: Graph, bn: onnx.NodeProto) -> tuple[onnx.NodeProto | None, str | None]:
    """The layer ``bn`` folds into, or None and the reason it does not (None: not a candidate)."""
    layer = graph.producers().get(bn.input[0])
    if layer is None or layer.domain not in ("", "ai.onnx") or layer.op_type not in LAYERS:
        return None, None
    why = _why_not(graph, bn, layer)
    return (None, why) if why else (layer, None)


def _why_not(graph: Graph, bn: onnx.NodeProto, layer: onnx.NodeProto) -> str | None:
    if len([o for o in bn.output if o]) > 1 or attrs_of(bn).get("training_mode", 0):
        return "BatchNormalization is in training mode"
    readers = graph.consumers().get(layer.output[0], [])
    if layer.output[0] in graph.outputs:
        return f"{layer.op_type} output is a graph output"
    if len(readers) != 1:
        return f"{layer.op_type} output has {len(readers)} consumers"
    if any(graph.const(i) is None for i in bn.input[1:5]):
        return "BatchNormalization parameters are not constant"
    if graph.const(layer.input[1]) is None:
        return f"{layer.op_type} weights are not constant"
    if len(layer.input) > 2 and layer.input[2] and graph.const(layer.input[2]) is None:
        return f"{layer.op_type} bias is not constant"
    w = graph.const(layer.input[1])
    if layer.op_type == "MatMul":
        shape = graph.shapes.get(layer.output[0])
        if w.ndim != 2 or shape is None or len(shape) != 2 or graph.shapes.get(layer.input[0]) is None:
            return "MatMul is not [M, K] x [K, N] with a constant 2D weight"
    channels = graph.const(bn.input[1]).size
    if channels != out_channels(layer, w):
        return f"BatchNormalization has {channels} channels, {layer.op_type} has {out_channels(layer, w)}"
    return None


def out_channels(layer: onnx.NodeProto, w: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return w.shape[0]
    if layer.op_type == "Gemm" and attrs_of(layer).get("transB", 0):
        return w.shape[0]
    return w.shape[-1]


def bn_factors(graph: Graph, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(f, mean, beta) in float64: BN(y) = f * (y - mean) + beta."""
    gamma, beta, mean, var = (graph.const(i).astype(np.float64).reshape(-1) for i in bn.input[1:5])
    eps = float(attrs_of(bn).get("epsilon", 1e-5))
    return gamma / np.sqrt(var + eps), mean, beta


def _tagged(node: onnx.NodeProto, pass_name: str) -> onnx.NodeProto:
    node.metadata_props.add(key="bnnc.pass", value=pass_name)
    return node


def rewrite(graph: Graph, bn: onnx.NodeProto, layer: onnx.NodeProto, pass_name: str) -> onnx.NodeProto:
    """The folded layer, producing ``bn``'s output."""
    f, mean, beta = bn_factors(graph, bn)
    w = graph.const(layer.input[1])
    a = attrs_of(layer)
    bias = graph.const(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else None
    if layer.op_type == "Conv":
        w2 = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
        b = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
        b2 = (b - mean) * f + beta
    else:
        trans = layer.op_type == "Gemm" and a.get("transB", 0)
        w2 = w * (f[:, None] if trans else f[None, :])
        c = 0.0 if bias is None else float(a.get("beta", 1.0)) * bias.astype(np.float64)
        b2 = (np.asarray(c) - mean) * f + beta
    names = [graph.add_const(w2.astype(w.dtype), f"{layer.name}_w_folded"),
             graph.add_const(b2.astype(w.dtype), f"{layer.name}_b_folded")]
    name = layer.name  # the layer keeps its name: the report and the layer table refer to it
    if layer.op_type == "Conv":
        node = helper.make_node("Conv", [layer.input[0], *names], [bn.output[0]], name=name, **a)
    else:
        keep = {k: v for k, v in a.items() if k in ("alpha", "transA", "transB")}
        node = helper.make_node("Gemm", [layer.input[0], *names], [bn.output[0]], name=name, **keep)
    return _tagged(node, pass_name)


class FoldBatchNormIntoFloatLayer(Pass):
    """See the module docstring."""

    name = "fold-batchnorm-into-float-layer"

    def call(self, graph: Graph) -> PassResult:
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for bn in list(graph.nodes):
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            layer, reason = match(graph, bn)
            if reason is not None:
                reasons.append(f"{bn.name}: BatchNormalization not folded: {reason}")
            if layer is None:
                continue
            graph.replace([layer, bn], [rewrite(graph, bn, layer, self.name)])
            stats[layer.op_type] += 1
        return PassResult(bool(stats), dict(stats), reasons)
