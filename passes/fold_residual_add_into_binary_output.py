"""Fold a shortcut Add after a float-output binary layer into the layer, as its residual input.

Bi-Real Net and its kin add a real-valued shortcut to every binary convolution:
``y = Add(layer(x), r)``, with r the block's input. When the layer's float output has no other
reader and r has exactly the output's shape (no broadcasting), the Add becomes the layer's
optional input R (BinaryConv / BinaryDense input 6, docs/binary_ops.md): the kernel writes
``float32(s) * scale[c] + bias[c] + R``, the same two float32 roundings in the same order as the
separate Add (addition commutes exactly), so the result is bit-identical and one pass over the
tensor is saved. Runs after fold-affine-into-binary-output, so the layer's BatchNorm is already
in its scale and bias; binary-weight layers (float convolutions) are left alone.
"""

from __future__ import annotations

from bnnc.graph import Graph, node_attr
from bnnc.matching import is_bnnc, is_std, only_reader
from bnnc.pipeline import Pass, PassResult

NAME = "fold-residual-add-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense")
_RESIDUAL = 6  # X, X_mask, W, W_mask, scale, bias, R


class FoldResidualAddIntoBinaryOutput(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        folded = 0
        reasons: list[str] = []
        cons = graph.consumers()
        for layer in list(graph.nodes):
            if not is_bnnc(layer, *_LAYERS) or node_attr(layer, "output", "float") != "float":
                continue
            why = self._why_not(graph, cons, layer)
            if why is not None:
                if why:
                    reasons.append(f"{layer.name}: shortcut Add not folded: {why}")
                continue
            add = cons[layer.output[0]][0]
            other = add.input[1] if add.input[0] == layer.output[0] else add.input[0]
            while len(layer.input) < _RESIDUAL:
                layer.input.append("")
            layer.input.append(other)
            old = layer.output[0]
            layer.output[0] = add.output[0]
            graph.replace([add], [])
            graph.shapes.pop(old, None)
            folded += 1
            cons = graph.consumers()
        return PassResult(modified=folded > 0, stats={"folded": folded}, reasons=reasons)

    @staticmethod
    def _why_not(graph: Graph, cons: dict, layer) -> str | None:
        """None when the layer's Add folds; "" when there is no Add to speak of; else the reason."""
        y = layer.output[0]
        readers = cons.get(y, [])
        if len(readers) != 1 or not is_std(readers[0], "Add"):
            return ""
        if not only_reader(cons, y, graph):
            return "the layer's output is also a graph output"
        if len(layer.input) > _RESIDUAL and layer.input[_RESIDUAL]:
            return "the layer already has a residual"
        add = readers[0]
        if add.input[0] == add.input[1]:
            return "Add of the layer's output to itself"
        other = add.input[1] if add.input[0] == y else add.input[0]
        if graph.shape(other) is None or graph.shape(other) != graph.shape(y):
            return "the shortcut's shape differs from the layer's output (broadcasting Add)"
        if graph.dtype(other) != "float32":
            return "the shortcut is not float32"
        return None
