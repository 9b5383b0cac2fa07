"""Fuse a bnnc.Binarize of a float-output binary layer's result into the layer.

In Bi-Real Net the sum ``y = layer(x) + shortcut`` is both the next block's shortcut (float) and,
binarized, the next binary layer's input; no threshold can replace it, since the shortcut is
real. The Binarize then becomes a second (and third) output of the layer, which writes every
value of y and its packed sign in the same pass (attribute ``bits_zero`` = the Binarize's
``zero``; docs/binary_ops.md), reading y back from memory no more. The packed tensors keep their
names, so ``bnnc verify`` still compares them with onnxruntime bit by bit.
"""

from __future__ import annotations

import onnx_ir as ir

from bnnc.ir import is_bnnc, node_attr, remove, replace_value, set_attrs
from bnnc.pipeline import Pass, PassResult

NAME = "fuse-binarize-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense")


class FuseBinarizeIntoBinaryOutput(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        fused = 0
        reasons: list[str] = []
        for b in [n for n in graph if is_bnnc(n, "Binarize")]:
            layer = b.inputs[0].producer()
            if not is_bnnc(layer, *_LAYERS) or node_attr(layer, "output", "float") != "float":
                continue
            zero = int(node_attr(b, "zero", 1))
            if len(layer.outputs) > 1:
                reasons.append(f"{b.name}: not fused into {layer.name}, which already writes bits")
                continue
            if (len(b.outputs) == 2) != (zero == 0):
                reasons.append(f"{b.name}: not fused: a nonzero mask output with zero = {zero}")
                continue
            layer.resize_outputs(1 + len(b.outputs))
            for old, new in zip(b.outputs, layer.outputs[1:]):
                new.shape, new.dtype = old.shape, old.dtype
                replace_value(graph, old, new, rename=True)
            set_attrs(layer, bits_zero=zero)
            remove(graph, [b])
            fused += 1
        return PassResult(model, fused > 0, {"fused": fused}, reasons)
