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

import onnx_ir as ir

from bnnc.ir import dtype, is_bnnc, is_std, node_attr, remove, replace_value, shape
from bnnc.pipeline import Pass, PassResult

NAME = "fold-residual-add-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense")
_RESIDUAL = 6  # X, X_mask, W, W_mask, scale, bias, R


class FoldResidualAddIntoBinaryOutput(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        folded = 0
        reasons: list[str] = []
        for layer in list(graph):
            if not is_bnnc(layer, *_LAYERS) or node_attr(layer, "output", "float") != "float":
                continue
            why = self._why_not(layer)
            if why is not None:
                if why:
                    reasons.append(f"{layer.name}: shortcut Add not folded: {why}")
                continue
            y = layer.outputs[0]
            add = y.consumers()[0]
            other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
            layer.resize_inputs(_RESIDUAL + 1)
            layer.replace_input_with(_RESIDUAL, other)
            replace_value(graph, add.outputs[0], y, rename=True)
            remove(graph, [add])
            folded += 1
        return PassResult(model, folded > 0, {"folded": folded}, reasons)

    @staticmethod
    def _why_not(layer: ir.Node) -> str | None:
        """None when the layer's Add folds; "" when there is no Add to speak of; else the reason."""
        y = layer.outputs[0]
        readers = y.consumers()
        if len(readers) != 1 or not is_std(readers[0], "Add"):
            return ""
        if y.is_graph_output():
            return "the layer's output is also a graph output"
        if len(layer.inputs) > _RESIDUAL and layer.inputs[_RESIDUAL] is not None:
            return "the layer already has a residual"
        add = readers[0]
        if add.inputs[0] is add.inputs[1]:
            return "Add of the layer's output to itself"
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        if shape(other) is None or shape(other) != shape(y):
            return "the shortcut's shape differs from the layer's output (broadcasting Add)"
        if dtype(other) != "float32":
            return "the shortcut is not float32"
        return None
