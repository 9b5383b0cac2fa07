"""Fuse a bnnc.Binarize of a float-output binary layer's result into the layer.

In Bi-Real Net the sum ``y = layer(x) + shortcut`` is both the next block's shortcut (float) and,
binarized, the next binary layer's input; no threshold can replace it, since the shortcut is
real. The Binarize then becomes a second (and third) output of the layer, which writes every
value of y and its packed sign in the same pass (attribute ``bits_zero`` = the Binarize's
``zero``; docs/binary_ops.md), reading y back from memory no more. The packed tensors keep their
names, so ``bnnc verify`` still compares them with onnxruntime bit by bit.
"""

from __future__ import annotations

from onnx import helper

from bnnc.graph import Graph, node_attr
from bnnc.matching import is_bnnc
from bnnc.pipeline import Pass, PassResult

NAME = "fuse-binarize-into-binary-output"
_LAYERS = ("BinaryConv", "BinaryDense")


class FuseBinarizeIntoBinaryOutput(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        fused = 0
        reasons: list[str] = []
        prods = graph.producers()
        for b in [n for n in graph.nodes if is_bnnc(n, "Binarize")]:
            layer = prods.get(b.input[0])
            if not is_bnnc(layer, *_LAYERS) or node_attr(layer, "output", "float") != "float":
                continue
            zero = int(node_attr(b, "zero", 1))
            if len(layer.output) > 1:
                reasons.append(f"{b.name}: not fused into {layer.name}, which already writes bits")
                continue
            if (len(b.output) == 2) != (zero == 0):
                reasons.append(f"{b.name}: not fused: a nonzero mask output with zero = {zero}")
                continue
            layer.output.extend(b.output)
            layer.attribute.append(helper.make_attribute("bits_zero", zero))
            graph.replace([b], [])
            fused += 1
        return PassResult(modified=fused > 0, stats={"fused": fused}, reasons=reasons)
