"""Remove the nodes that return their input unchanged.

y = x holds for: Identity; Dropout at inference (mask output unused, training_mode not set);
Cast to the input's own dtype; Reshape, Flatten, Squeeze and Expand whose static output shape equals
the input shape; Transpose with the identity permutation; Pad whose pads are all zero. Readers
of y read x instead (``Graph.rename_uses``, which keeps graph output names).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from bnnc.graph import Graph, attrs_of, np_dtype
from bnnc.pipeline import Pass, PassResult
from runtime.errors import BnncError

SAME_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Expand")


def _is_identity_cast(graph: Graph, node: onnx.NodeProto) -> bool:
    try:
        to = np_dtype(attrs_of(node)["to"])
    except (BnncError, KeyError):
        return False
    return graph.dtype(node.input[0]) == to


def _is_identity_transpose(graph: Graph, node: onnx.NodeProto) -> bool:
    shape = graph.shapes.get(node.input[0])
    if shape is None:
        return False
    perm = attrs_of(node).get("perm")
    if perm is None:
        return len(shape) <= 1
    return list(perm) == list(range(len(shape)))


def _is_zero_pad(graph: Graph, node: onnx.NodeProto) -> bool:
    if len(node.input) > 1:
        pads = graph.const(node.input[1])
    else:
        pads = attrs_of(node).get("pads")
    return pads is not None and not np.any(np.asarray(pads))


def _dropout_reason(graph: Graph, node: onnx.NodeProto) -> str | None:
    if len(node.output) > 1 and node.output[1] and (node.output[1] in graph.outputs or node.output[1] in graph.consumers()):
        return "its mask output is used"
    if len(node.input) > 2 and node.input[2]:
        training = graph.const(node.input[2])
        if training is None or bool(training):
            return "training_mode is set or not constant"
    return None


def match(graph: Graph, node: onnx.NodeProto) -> tuple[bool, str | None]:
    """(is an identity, reason it is one that cannot be removed)."""
    if node.domain not in ("", "ai.onnx"):
        return False, None
    op = node.op_type
    if op == "Dropout":
        reason = _dropout_reason(graph, node)
        return reason is None, reason
    if op == "Identity":
        ok = True
    elif op == "Cast":
        ok = _is_identity_cast(graph, node)
    elif op in SAME_SHAPE_OPS:
        s_in, s_out = graph.shape(node.input[0]), graph.shape(node.output[0])
        ok = s_in is not None and s_in == s_out
    elif op == "Transpose":
        ok = _is_identity_transpose(graph, node)
    elif op == "Pad":
        ok = _is_zero_pad(graph, node)
    else:
        return False, None
    if ok and node.output[0] in graph.outputs and (
        node.input[0] in graph.inputs or node.input[0] in graph.consts or node.input[0] in graph.outputs
    ):
        return False, None  # it carries a graph input or constant to an output name: needed
    return ok, None


class RemoveIdentityOps(Pass):
    """See the module docstring."""

    name = "remove-identity-ops"

    def call(self, graph: Graph) -> PassResult:
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for node in list(graph.nodes):
            ok, reason = match(graph, node)
            if reason is not None:
                reasons.append(f"{node.name}: {node.op_type} not removed: {reason}")
            if not ok:
                continue
            graph.replace([node], [])
            graph.rename_uses(node.output[0], node.input[0])
            stats[node.op_type] += 1
        if stats:
            graph.prune()  # shape tensors of removed Reshapes are now unused
        return PassResult(bool(stats), dict(stats), reasons)
