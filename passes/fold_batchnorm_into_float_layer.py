"""Fold an inference BatchNormalization after a float Conv/Gemm/MatMul into its weights and bias.

BN(y) = gamma * (y - mean) / sqrt(var + eps) + beta = f * y + (beta - f * mean), f = gamma / sqrt(var + eps),
per channel (axis 1). With y = W * x + b:  W' = W * f (per output channel), b' = (b - mean) * f + beta.
* Conv: W [Cout, Cin/g, kh, kw] scales along axis 0; the bias input is added if absent.
* Gemm: y = alpha * A' B' + beta_g * C; the columns of B' scale by f and C' = (beta_g * C - mean) * f + beta
  with beta_g set to 1.
* MatMul with a constant 2D weight and a rank-2 output becomes Gemm(A, W * f, (0 - mean) * f + beta).
The factors (bnnc.matching.batchnorm_factors) are computed in float64 and stored in the weight dtype. Only standard-domain layers
match (binary layers are bnnc ops by the time this runs). Non-constant weights or BN parameters,
a layer output read elsewhere, or BN in training mode: not folded, with a reason.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from bnnc.ir import add_const, adopt_name, attrs_of, const, is_std, make_node, remove, replace_value
from bnnc.layers import carry
from bnnc.matching import batchnorm_factors
from bnnc.pipeline import Pass, PassResult

LAYERS = ("Conv", "Gemm", "MatMul")


def match(bn: ir.Node) -> tuple[ir.Node | None, str | None]:
    """The layer ``bn`` folds into, or None and the reason it does not (None: not a candidate)."""
    layer = bn.inputs[0].producer() if bn.inputs and bn.inputs[0] is not None else None
    if not is_std(layer, *LAYERS):
        return None, None
    why = _why_not(bn, layer)
    return (None, why) if why else (layer, None)


def _why_not(bn: ir.Node, layer: ir.Node) -> str | None:
    if len([o for o in bn.outputs if o.name]) > 1 or attrs_of(bn).get("training_mode", 0):
        return "BatchNormalization is in training mode"
    y = layer.outputs[0]
    readers = y.consumers()
    if y.is_graph_output():
        return f"{layer.op_type} output is a graph output"
    if len(readers) != 1:
        return f"{layer.op_type} output has {len(readers)} consumers"
    if batchnorm_factors(bn) is None:
        return "BatchNormalization parameters are not constant"
    w = const(layer.inputs[1])
    if w is None:
        return f"{layer.op_type} weights are not constant"
    if len(layer.inputs) > 2 and layer.inputs[2] is not None and const(layer.inputs[2]) is None:
        return f"{layer.op_type} bias is not constant"
    if layer.op_type == "MatMul":
        out = y.shape
        if w.ndim != 2 or out is None or len(out) != 2 or layer.inputs[0].shape is None:
            return "MatMul is not [M, K] x [K, N] with a constant 2D weight"
    channels = const(bn.inputs[1]).size
    if channels != out_channels(layer, w):
        return f"BatchNormalization has {channels} channels, {layer.op_type} has {out_channels(layer, w)}"
    return None


def out_channels(layer: ir.Node, w: np.ndarray) -> int:
    if layer.op_type == "Conv":
        return w.shape[0]
    if layer.op_type == "Gemm" and attrs_of(layer).get("transB", 0):
        return w.shape[0]
    return w.shape[-1]


def rewrite(graph: ir.Graph, bn: ir.Node, layer: ir.Node, pass_name: str) -> ir.Node:
    """The folded layer (not yet in the graph)."""
    f, mean, beta = batchnorm_factors(bn)
    w = const(layer.inputs[1])
    a = attrs_of(layer)
    bias = const(layer.inputs[2]) if len(layer.inputs) > 2 and layer.inputs[2] is not None else None
    if layer.op_type == "Conv":
        w2 = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
        b = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
        b2 = (b - mean) * f + beta
    else:
        trans = layer.op_type == "Gemm" and a.get("transB", 0)
        w2 = w * (f[:, None] if trans else f[None, :])
        c = 0.0 if bias is None else float(a.get("beta", 1.0)) * bias.astype(np.float64)
        b2 = (np.asarray(c) - mean) * f + beta
    consts = [add_const(graph, w2.astype(w.dtype), f"{layer.name}_w_folded"),
              add_const(graph, b2.astype(w.dtype), f"{layer.name}_b_folded")]
    if layer.op_type != "Conv":
        a = {k: v for k, v in a.items() if k in ("alpha", "transA", "transB")}
    node = make_node(graph, "Conv" if layer.op_type == "Conv" else "Gemm", [layer.inputs[0], *consts],
                     f"{bn.name}_folded", pass_name, **a)
    out = bn.outputs[0]
    node.outputs[0].shape, node.outputs[0].dtype = out.shape, out.dtype
    carry(layer, node)
    return node


class FoldBatchNormIntoFloatLayer(Pass):
    """See the module docstring."""

    name = "fold-batchnorm-into-float-layer"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for bn in list(graph):
            if not is_std(bn, "BatchNormalization"):
                continue
            layer, reason = match(bn)
            if reason is not None:
                reasons.append(f"{bn.name}: BatchNormalization not folded: {reason}")
            if layer is None:
                continue
            node = rewrite(graph, bn, layer, self.name)
            graph.insert_before(layer, node)
            replace_value(graph, bn.outputs[0], node.outputs[0], rename=True)
            remove(graph, [bn, layer])
            adopt_name(node, layer)  # the report and the layer table refer to the layer's name
            stats[layer.op_type] += 1
        return PassResult(model, bool(stats), dict(stats), reasons)
