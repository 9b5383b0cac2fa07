"""Fuse a float Conv/Gemm/MatMul and the activation that alone reads it into one bnnc.Fused* node.

The node is ``bnnc.FusedConv`` / ``bnnc.FusedGemm`` / ``bnnc.FusedMatMul``.

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
import onnx
from onnx import helper

from bnnc.graph import BNNC_DOMAIN, Graph, attrs_of
from bnnc.pipeline import Pass, PassResult
from runtime.kernels.nn import ACTIVATIONS as RUNTIME_ACTIVATIONS

LAYERS = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}
# what the runtime's fused kernels can apply, in the runtime's own list
ACTIVATIONS = tuple(a for a in RUNTIME_ACTIVATIONS if a)
F32 = np.finfo(np.float32)


def _clip_bounds(graph: Graph, act: onnx.NodeProto) -> list[float] | None:
    a = attrs_of(act)
    if len(act.input) == 1 and ("min" in a or "max" in a):
        return [float(a.get("min", F32.min)), float(a.get("max", F32.max))]
    bounds = []
    for k, default in ((1, F32.min), (2, F32.max)):
        name = act.input[k] if len(act.input) > k else ""
        if not name:
            bounds.append(float(default))
            continue
        v = graph.const(name)
        if v is None or v.size != 1:
            return None
        bounds.append(float(v.reshape(())))
    return bounds


def activation_params(graph: Graph, act: onnx.NodeProto) -> list[float] | None:
    """The ``activation_params`` of ``act``, or None when they are not compile-time constants."""
    a = attrs_of(act)
    if act.op_type == "LeakyRelu":
        return [float(a.get("alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))]
    if act.op_type == "Clip":
        return _clip_bounds(graph, act)
    return []


def match(graph: Graph, layer: onnx.NodeProto) -> tuple[onnx.NodeProto | None, str | None]:
    """The activation to fuse into ``layer``, or None and why not (None: not a candidate)."""
    if layer.domain not in ("", "ai.onnx") or layer.op_type not in LAYERS:
        return None, None
    readers = graph.consumers().get(layer.output[0], [])
    if len(readers) != 1 or readers[0].op_type not in ACTIVATIONS or readers[0].domain not in ("", "ai.onnx"):
        return None, None
    act = readers[0]
    if layer.output[0] in graph.outputs:
        return None, f"{layer.op_type} output is also a graph output"
    if activation_params(graph, act) is None:
        return None, "Clip bounds are not constant scalars"
    return act, None


def rewrite(graph: Graph, layer: onnx.NodeProto, act: onnx.NodeProto, pass_name: str) -> onnx.NodeProto:
    node = helper.make_node(
        LAYERS[layer.op_type],
        list(layer.input),
        [act.output[0]],
        name=layer.name,  # the layer keeps its name: the report and the layer table refer to it
        domain=BNNC_DOMAIN,
        **attrs_of(layer),
        activation=act.op_type,
    )
    params = activation_params(graph, act)
    node.attribute.append(helper.make_attribute("activation_params", params, attr_type=onnx.AttributeProto.FLOATS))
    node.metadata_props.add(key="bnnc.pass", value=pass_name)
    return node


class FuseActivationIntoFloatLayer(Pass):
    """See the module docstring."""

    name = "fuse-activation-into-float-layer"

    def call(self, graph: Graph) -> PassResult:
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for layer in list(graph.nodes):
            act, reason = match(graph, layer)
            if reason is not None:
                reasons.append(f"{layer.name}: activation not fused: {reason}")
            if act is None:
                continue
            graph.replace([layer, act], [rewrite(graph, layer, act, self.name)])
            stats[f"{layer.op_type}+{act.op_type}"] += 1
        return PassResult(bool(stats), dict(stats), reasons)
