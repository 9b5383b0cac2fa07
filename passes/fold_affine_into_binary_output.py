"""Fold per-channel affine ops after a float-output binary layer into its scale and bias.

A binary layer in float mode writes ``y = s * scale_c + bias_c``. A following per-channel
affine op ``a_c * y + d_c`` (BatchNormalization: a = gamma / sqrt(var + eps), d = beta - a * mean;
Mul/Div/Add/Sub by per-channel constants) whose input has no other reader is absorbed:
``scale_c <- a_c * scale_c``, ``bias_c <- a_c * bias_c + d_c``. Runs after threshold folding, so
it only sees layers whose output stays real (the last layer, Bi-Real Net's residual branches).
"""

from __future__ import annotations

import numpy as np
import onnx

from bnnc.graph import Graph, node_attr
from bnnc.matching import is_bnnc, is_std
from bnnc.pipeline import Pass, PassResult

NAME = "fold-affine-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense", "BinaryWeightConv", "BinaryWeightDense")
_NOTHING = "graph output"  # nothing follows the layer: no reason to give


def _per_channel(graph: Graph, name: str, channels: int, rank: int) -> np.ndarray | None:
    c = graph.const(name)
    if c is None or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,))


def affine_of(graph: Graph, node: onnx.NodeProto, x: str, channels: int, rank: int):
    """(a, d) with node(x) = a * x + d per channel, or the reason there are none."""
    if is_std(node, "BatchNormalization") and node.input[0] == x and len(node.output) == 1:
        g, b, m, v = (graph.const(i) for i in node.input[1:5])
        if any(p is None for p in (g, b, m, v)):
            return f"BatchNormalization node {node.name} has parameters that are not constant"
        a = g.astype(np.float64) / np.sqrt(v.astype(np.float64) + float(node_attr(node, "epsilon", 1e-5)))
        return a, b - a * m
    if not is_std(node, "Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return f"{node.op_type} node {node.name} is not a per-channel affine op"
    other = node.input[1] if node.input[0] == x else node.input[0]
    p = _per_channel(graph, other, channels, rank)
    if p is None:
        return f"{node.op_type} node {node.name} mixes in a value that is not a per-channel constant"
    if node.op_type in ("Div", "Sub") and node.input[0] != x:
        return f"{node.op_type} node {node.name} has the layer's value on the right"
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Div":
        return 1 / p, zeros
    return {"Mul": (p, zeros), "Add": (ones, p), "Sub": (ones, -p)}[node.op_type]


class FoldAffineIntoBinaryOutput(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        folded = 0
        reasons: list[str] = []
        layers = [n for n in graph.nodes if is_bnnc(n, *_LAYERS) and node_attr(n, "output", "float") == "float"]
        for layer in layers:
            why = ""
            while not why:
                why = self._fold_next(graph, layer)
                folded += not why
            if why != _NOTHING:
                reasons.append(f"{layer.name}: nothing more folded: {why}")
        graph.prune()
        return PassResult(modified=folded > 0, stats={"folded": folded}, reasons=reasons)

    def _fold_next(self, graph: Graph, layer: onnx.NodeProto) -> str:
        """Absorb the op after ``layer``; "" when it did, else the reason."""
        y = layer.output[0]
        shape = graph.shape(y)
        readers = graph.consumers().get(y, [])
        if y in graph.outputs or not readers:
            return _NOTHING
        if shape is None or len(shape) < 2:
            return f"the shape of '{y}' is unknown"
        if len(readers) > 1:
            return f"'{y}' has {len(readers)} readers"
        ad = affine_of(graph, readers[0], y, shape[1], len(shape))
        if isinstance(ad, str):
            return ad
        self._absorb(graph, layer, readers[0], *ad)
        return ""
    def _absorb(self, graph: Graph, layer, nxt, a, d) -> None:
        si, bi = (4, 5) if layer.op_type in ("BinaryConv", "BinaryDense") else (3, 4)
        scale = graph.const(layer.input[si]).astype(np.float64)
        bias = graph.const(layer.input[bi]).astype(np.float64)
        layer.input[si] = graph.add_const((scale * a).astype(np.float32), layer.name + "_scale")
        layer.input[bi] = graph.add_const((bias * a + d).astype(np.float32), layer.name + "_bias")
        out = nxt.output[0]
        graph.replace([nxt], [])
        old = layer.output[0]
        layer.output[0] = out
        graph.shapes.pop(old, None)
