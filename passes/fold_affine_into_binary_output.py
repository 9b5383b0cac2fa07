"""Fold per-channel affine ops after a float-output binary layer into its scale and bias.

A binary layer in float mode writes ``y = s * scale_c + bias_c``. A following per-channel
affine op ``a_c * y + d_c`` (BatchNormalization: a = gamma / sqrt(var + eps), d = beta - a * mean,
bnnc.matching.batchnorm_factors;
Mul/Div/Add/Sub by per-channel constants) whose input has no other reader is absorbed:
``scale_c <- a_c * scale_c``, ``bias_c <- a_c * bias_c + d_c``. Runs after threshold folding, so
it only sees layers whose output stays real (the last layer, Bi-Real Net's residual branches).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnnc.ir import add_const, const, is_bnnc, is_std, node_attr, prune, remove, replace_value, shape
from bnnc.matching import batchnorm_factors, per_channel
from bnnc.pipeline import Pass, PassResult

NAME = "fold-affine-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense", "BinaryWeightConv", "BinaryWeightDense")
_NOTHING = "graph output"  # nothing follows the layer: no reason to give


def affine_of(node: ir.Node, x: ir.Value, channels: int, rank: int):
    """(a, d) with node(x) = a * x + d per channel, or the reason there are none."""
    if is_std(node, "BatchNormalization") and node.inputs[0] is x and len(node.outputs) == 1:
        f = batchnorm_factors(node)
        if f is None:
            return f"BatchNormalization node {node.name} has parameters that are not constant"
        a, mean, beta = f
        return a, beta - a * mean
    if not is_std(node, "Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
        return f"{node.op_type} node {node.name} is not a per-channel affine op"
    other = node.inputs[1] if node.inputs[0] is x else node.inputs[0]
    if const(other) is None:  # a shortcut Add is fold-residual-add-into-binary-output's
        return f"{node.op_type} node {node.name} reads a computed value '{other.name}', not a constant"
    p = per_channel(other, channels, rank)
    if p is None:
        return f"{node.op_type} node {node.name} mixes in a value that is not a per-channel constant"
    if node.op_type in ("Div", "Sub") and node.inputs[0] is not x:
        return f"{node.op_type} node {node.name} has the layer's value on the right"
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Div":
        return 1 / p, zeros
    return {"Mul": (p, zeros), "Add": (ones, p), "Sub": (ones, -p)}[node.op_type]


class FoldAffineIntoBinaryOutput(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        folded = 0
        reasons: list[str] = []
        layers = [n for n in graph if is_bnnc(n, *_LAYERS) and node_attr(n, "output", "float") == "float"]
        for layer in layers:
            why = ""
            while not why:
                why = self._fold_next(graph, layer)
                folded += not why
            if why != _NOTHING:
                reasons.append(f"{layer.name}: nothing more folded: {why}")
        prune(graph)
        return PassResult(model, folded > 0, {"folded": folded}, reasons)

    def _fold_next(self, graph: ir.Graph, layer: ir.Node) -> str:
        """Absorb the op after ``layer``; "" when it did, else the reason."""
        y = layer.outputs[0]
        s = shape(y)
        readers = y.consumers()
        if y.is_graph_output() or not readers:
            return _NOTHING
        if s is None or len(s) < 2:
            return f"the shape of '{y.name}' is unknown"
        if len(readers) > 1:
            return f"'{y.name}' has {len(readers)} readers"
        ad = affine_of(readers[0], y, s[1], len(s))
        if isinstance(ad, str):
            return ad
        self._absorb(graph, layer, readers[0], *ad)
        return ""

    def _absorb(self, graph: ir.Graph, layer: ir.Node, nxt: ir.Node, a, d) -> None:
        """scale <- a * scale, bias <- a * bias + d; the layer writes ``nxt``'s output."""
        si, bi = (4, 5) if layer.op_type in ("BinaryConv", "BinaryDense") else (3, 4)
        scale = const(layer.inputs[si]).astype(np.float64)
        bias = const(layer.inputs[bi]).astype(np.float64)
        layer.replace_input_with(si, add_const(graph, (scale * a).astype(np.float32), layer.name + "_scale"))
        layer.replace_input_with(bi, add_const(graph, (bias * a + d).astype(np.float32), layer.name + "_bias"))
        # y now holds what nxt computed: it takes over nxt's readers and output name
        replace_value(graph, nxt.outputs[0], layer.outputs[0], rename=True)
        remove(graph, [nxt])
