"""Remove the nodes that return their input unchanged.

y = x holds for: Identity; Dropout at inference (mask output unused, training_mode not set);
Cast to the input's own dtype; Reshape, Flatten, Squeeze and Expand whose static output shape equals
the input shape; Transpose with the identity permutation; Pad whose pads are all zero. Readers
of y read x instead (``bnnc.ir.replace_value``, which keeps graph output names).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from bnnc.ir import const, dtype, is_std_domain, node_attr, np_dtype, prune, remove, replace_value, shape
from bnnc.pipeline import Pass, PassResult
from runtime.errors import BnncError

SAME_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Expand")


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _is_identity_cast(node: ir.Node) -> bool:
    try:
        to = np_dtype(ir.DataType(node_attr(node, "to")))
    except (BnncError, ValueError, TypeError):
        return False
    return dtype(node.inputs[0]) == to


def _is_identity_transpose(node: ir.Node) -> bool:
    s = node.inputs[0].shape
    if s is None:
        return False
    perm = node_attr(node, "perm")
    if perm is None:
        return len(s) <= 1
    return list(perm) == list(range(len(s)))


def _is_zero_pad(node: ir.Node) -> bool:
    pads = const(_input(node, 1)) if _input(node, 1) is not None else node_attr(node, "pads")
    return pads is not None and not np.any(np.asarray(pads))


def _dropout_reason(node: ir.Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].name and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return "its mask output is used"
    training = _input(node, 2)
    if training is not None:
        t = const(training)
        if t is None or bool(t):
            return "training_mode is set or not constant"
    return None


def match(node: ir.Node) -> tuple[bool, str | None]:
    """(is an identity, reason it is one that cannot be removed)."""
    if not is_std_domain(node.domain) or not node.inputs or node.inputs[0] is None:
        return False, None
    op = node.op_type
    if op == "Dropout":
        reason = _dropout_reason(node)
        return reason is None, reason
    if op == "Identity":
        ok = True
    elif op == "Cast":
        ok = _is_identity_cast(node)
    elif op in SAME_SHAPE_OPS:
        s_in, s_out = shape(node.inputs[0]), shape(node.outputs[0])
        ok = s_in is not None and s_in == s_out
    elif op == "Transpose":
        ok = _is_identity_transpose(node)
    elif op == "Pad":
        ok = _is_zero_pad(node)
    else:
        return False, None
    x = node.inputs[0]
    if ok and node.outputs[0].is_graph_output() and (x.is_graph_input() or x.const_value is not None or x.is_graph_output()):
        return False, None  # it carries a graph input or constant to an output name: needed
    return ok, None


class RemoveIdentityOps(Pass):
    """See the module docstring."""

    name = "remove-identity-ops"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for node in list(graph):
            ok, reason = match(node)
            if reason is not None:
                reasons.append(f"{node.name}: {node.op_type} not removed: {reason}")
            if not ok:
                continue
            replace_value(graph, node.outputs[0], node.inputs[0])
            remove(graph, [node])
            stats[node.op_type] += 1
        if stats:
            prune(graph)  # shape tensors of removed Reshapes are now unused
        return PassResult(model, bool(stats), dict(stats), reasons)
