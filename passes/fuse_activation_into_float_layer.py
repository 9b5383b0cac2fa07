"""Fuse a float-output layer and the activation that alone reads it into one node.

Conv / Gemm / MatMul become ``bnnc.FusedConv`` / ``bnnc.FusedGemm`` / ``bnnc.FusedMatMul``; a
``bnnc.BinaryWeightConv`` / ``bnnc.BinaryWeightDense`` (float input, binary weights, float output)
stays itself and takes the activation as attributes (once: one that has one already is left).

y = act(layer(x)): the fused node has the layer's inputs and attributes plus ``activation`` (the
activation's op type) and ``activation_params`` (floats):
  Relu, Sigmoid, Tanh: [];  LeakyRelu: [alpha];  HardSigmoid: [alpha, beta];
  Clip: [min, max] from constant inputs (or opset < 11 attributes), an absent bound being the
  float32 lowest/highest value.
The fused node produces the activation's output name, so graph outputs keep their names.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from bnnc.ir import BNNC_DOMAIN, adopt_name, attrs_of, const, is_bnnc, is_std, make_node, op_key, remove, replace_value
from bnnc.layers import carry
from bnnc.pipeline import Pass, PassResult
from runtime.kernels.nn import ACTIVATIONS as RUNTIME_ACTIVATIONS

LAYERS = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}
BINARY_WEIGHT = ("BinaryWeightConv", "BinaryWeightDense")  # fused in place (module docstring)
# what the runtime's fused kernels can apply, in the runtime's own list
ACTIVATIONS = tuple(a for a in RUNTIME_ACTIVATIONS if a)
F32 = np.finfo(np.float32)


def _clip_bounds(act: ir.Node) -> list[float] | None:
    a = attrs_of(act)
    if len(act.inputs) == 1 and ("min" in a or "max" in a):
        return [float(a.get("min", F32.min)), float(a.get("max", F32.max))]
    bounds = []
    for k, default in ((1, F32.min), (2, F32.max)):
        v = act.inputs[k] if len(act.inputs) > k else None
        if v is None:
            bounds.append(float(default))
            continue
        c = const(v)
        if c is None or c.size != 1:
            return None
        bounds.append(float(c.reshape(())))
    return bounds


def activation_params(act: ir.Node) -> list[float] | None:
    """The ``activation_params`` of ``act``, or None when they are not compile-time constants."""
    a = attrs_of(act)
    if act.op_type == "LeakyRelu":
        return [float(a.get("alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))]
    if act.op_type == "Clip":
        return _clip_bounds(act)
    return []


def match(layer: ir.Node) -> tuple[ir.Node | None, str | None]:
    """The activation to fuse into ``layer``, or None and why not (None: not a candidate)."""
    if not is_std(layer, *LAYERS) and not (is_bnnc(layer, *BINARY_WEIGHT) and "activation" not in attrs_of(layer)):
        return None, None
    y = layer.outputs[0]
    readers = y.consumers()
    if len(readers) != 1 or not is_std(readers[0], *ACTIVATIONS):
        return None, None
    act = readers[0]
    if y.is_graph_output():
        return None, f"{layer.op_type} output is also a graph output"
    if activation_params(act) is None:
        return None, "Clip bounds are not constant scalars"
    return act, None


def rewrite(graph: ir.Graph, layer: ir.Node, act: ir.Node, pass_name: str) -> ir.Node:
    """The fused node (not yet in the graph)."""
    op = layer.op_type if is_bnnc(layer, *BINARY_WEIGHT) else LAYERS[layer.op_type]
    node = make_node(graph, op, list(layer.inputs), f"{layer.name}_{act.op_type.lower()}", pass_name,
                     domain=BNNC_DOMAIN, **attrs_of(layer), activation=act.op_type,
                     activation_params=[float(p) for p in activation_params(act)])
    out = act.outputs[0]
    node.outputs[0].shape, node.outputs[0].dtype = out.shape, out.dtype
    carry(layer, node)
    return node


class FuseActivationIntoFloatLayer(Pass):
    """See the module docstring."""

    name = "fuse-activation-into-float-layer"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for layer in list(graph):
            if layer.graph is not graph:
                continue
            act, reason = match(layer)
            if reason is not None:
                reasons.append(f"{layer.name}: activation not fused: {reason}")
            if act is None:
                continue
            node = rewrite(graph, layer, act, self.name)
            graph.insert_before(layer, node)
            replace_value(graph, act.outputs[0], node.outputs[0], rename=True)
            remove(graph, [act, layer])
            adopt_name(node, layer)  # the report and the layer table refer to the layer's name
            stats[f"{op_key(layer)}+{act.op_type}"] += 1
        return PassResult(model, bool(stats), dict(stats), reasons)
