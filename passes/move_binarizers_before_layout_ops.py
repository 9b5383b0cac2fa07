"""Move binarizers above layout ops and cancel the layout ops that meet.

A binarizer is elementwise and monotone, so for every layout op L that only moves or selects
values (Transpose, Reshape, Flatten, Squeeze, Unsqueeze) and for MaxPool (max commutes with a
non-decreasing function): ``Sign(L(x)) = L(Sign(x))``. Moving the Sign up puts it right after
the float chain that feeds it (where thresholds fold) and leaves only layout ops between it and
the next binary layer. Transposes then sink below constant Pads (the pads are permuted) and meet
their inverses: ``Transpose(p2, Transpose(p1, x)) = Transpose(p1[p2], x)``, dropped when that is
the identity; ``Reshape(Reshape(x))`` keeps the last shape and is dropped when it is x's shape.
This turns tf2onnx's NHWC islands (``T -> Sign -> Pad -> T^-1``) into plain NCHW graphs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnnc.ir import (
    add_const,
    adopt_name,
    attrs_of,
    const,
    is_bnnc,
    is_std,
    make_node,
    node_attr,
    only_reader,
    remove,
    replace_value,
    shape,
)
from bnnc.pipeline import Pass, PassResult

NAME = "move-binarizers-before-layout-ops"
_MOVES_ONLY = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
_LAYOUT = (*_MOVES_ONLY, "MaxPool")


def _copy(graph: ir.Graph, node: ir.Node, inputs, name: str | None = None, **attrs) -> ir.Node:
    """A copy of ``node`` (op, attributes) reading ``inputs``, tagged as made by this pass."""
    a = attrs_of(node)
    a.update(attrs)
    return make_node(graph, node.op_type, inputs, name or node.name, NAME, domain=node.domain, **a)


def _replace_pair(graph: ir.Graph, first: ir.Node, second: ir.Node, new: list[ir.Node], out: ir.Value,
                  copies: tuple[tuple[ir.Node, ir.Node], ...] = ()) -> None:
    """``new`` (ending in ``out``) replaces first -> second; second's output keeps its name and
    each (copy, original) pair of ``copies`` the original's node name."""
    graph.insert_before(first, new)
    replace_value(graph, second.outputs[0], out, rename=True)
    remove(graph, [second, first])
    for copy, original in copies:
        adopt_name(copy, original)


def _swap_sign_up(graph: ir.Graph, sign: ir.Node, lay: ir.Node) -> None:
    """Sign(L(x)) -> L(Sign(x)); the final output keeps the Sign's name. When L(x) has other
    readers (a gating branch beside the binarizer) L stays for them and the Sign's readers get
    a copy of it: the binarizer's recognition does not depend on who else reads its input."""
    x = lay.inputs[0]
    new_sign = _copy(graph, sign, [x])
    new_sign.outputs[0].shape, new_sign.outputs[0].dtype = x.shape, x.dtype
    if only_reader(lay.outputs[0]) is sign:
        new_lay = _copy(graph, lay, [new_sign.outputs[0], *lay.inputs[1:]])
        _replace_pair(graph, lay, sign, [new_sign, new_lay], new_lay.outputs[0], ((new_sign, sign), (new_lay, lay)))
        return
    new_lay = _copy(graph, lay, [new_sign.outputs[0], *lay.inputs[1:]], name=lay.name + "_binarized")
    graph.insert_before(sign, [new_sign, new_lay])
    replace_value(graph, sign.outputs[0], new_lay.outputs[0], rename=True)
    remove(graph, [sign])
    adopt_name(new_sign, sign)


def _perm(node: ir.Node, rank: int) -> list[int]:
    return list(node_attr(node, "perm", list(range(rank))[::-1]))


def _sink_transpose_below_pad(graph: ir.Graph, tr: ir.Node, pad: ir.Node) -> bool:
    """Pad(T_p(x), pads) -> T_p(Pad(x, pads permuted back))."""
    pads = const(pad.inputs[1]) if len(pad.inputs) > 1 else None
    if pads is None or (len(pad.inputs) > 3 and pad.inputs[3] is not None) or node_attr(pad, "mode", "constant") != "constant":
        return False
    s = shape(tr.inputs[0])
    if s is None:
        return False
    rank = len(s)
    p = _perm(tr, rank)
    begin, end = [0] * rank, [0] * rank
    for i in range(rank):
        begin[p[i]], end[p[i]] = int(pads[i]), int(pads[rank + i])
    new_pads = add_const(graph, np.array(begin + end, dtype="int64"), pad.name + "_pads_nchw")
    new_pad = _copy(graph, pad, [tr.inputs[0], new_pads, *pad.inputs[2:]])
    new_pad.outputs[0].shape = ir.Shape([d + b + e for d, b, e in zip(s, begin, end)])
    new_pad.outputs[0].dtype = tr.inputs[0].dtype
    new_tr = _copy(graph, tr, [new_pad.outputs[0]])
    _replace_pair(graph, tr, pad, [new_pad, new_tr], new_tr.outputs[0], ((new_pad, pad), (new_tr, tr)))
    return True


def _merge_pair(graph: ir.Graph, first: ir.Node, second: ir.Node) -> bool:
    """Transpose∘Transpose and Reshape∘Reshape become one node, or none."""
    x = first.inputs[0]
    s = shape(x)
    if s is None:
        return False
    if first.op_type == "Transpose":
        p1, p2 = _perm(first, len(s)), _perm(second, len(s))
        perm = [p1[i] for i in p2]
        if perm == list(range(len(s))):
            replace_value(graph, second.outputs[0], x)
            remove(graph, [second, first])
            return True
        new = make_node(graph, "Transpose", [x], second.name + "_merged", NAME, perm=perm)
    else:
        out_shape = shape(second.outputs[0])
        if out_shape is None:
            return False
        if tuple(out_shape) == tuple(s):
            replace_value(graph, second.outputs[0], x)
            remove(graph, [second, first])
            return True
        new = _copy(graph, second, [x, *second.inputs[1:]])
        _replace_pair(graph, first, second, [new], new.outputs[0], ((new, second),))
        return True
    _replace_pair(graph, first, second, [new], new.outputs[0])
    return True


def transpose_equivalent(in_shape, out_shape) -> list[int] | None:
    """The perm of a Transpose equal to a Reshape from ``in_shape`` to ``out_shape``, if any.

    A reshape that keeps the order of the non-1 dims and only moves size-1 axes is a transpose
    (tf2onnx writes NCHW<->NHWC on 1x1 images as Reshape).
    """
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape):
        return None
    src_big = [i for i, d in enumerate(in_shape) if d != 1]
    dst_big = [i for i, d in enumerate(out_shape) if d != 1]
    if [in_shape[i] for i in src_big] != [out_shape[i] for i in dst_big]:
        return None
    perm = [-1] * len(out_shape)
    for s, d in zip(src_big, dst_big):
        perm[d] = s
    ones = iter(i for i, d in enumerate(in_shape) if d == 1)
    perm = [p if p >= 0 else next(ones) for p in perm]
    return None if perm == sorted(perm) else perm


def _reshape_to_transpose(graph: ir.Graph, node: ir.Node) -> bool:
    perm = transpose_equivalent(shape(node.inputs[0]), shape(node.outputs[0]))
    if perm is None:
        return False
    new = make_node(graph, "Transpose", [node.inputs[0]], node.name + "_as_transpose", NAME, perm=perm)
    graph.insert_before(node, new)
    replace_value(graph, node.outputs[0], new.outputs[0], rename=True)
    remove(graph, [node])
    return True


class MoveBinarizersBeforeLayoutOps(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats = {"binarizers_moved": 0, "transposes_sunk": 0, "pairs_merged": 0, "reshapes_as_transposes": 0}
        # a rewrite makes new nodes that may match again (a Sign moves up one op at a time):
        # sweep until a sweep changes nothing
        while self._sweep(graph, stats):
            pass
        return PassResult(model, any(stats.values()), stats)

    def _sweep(self, graph: ir.Graph, stats: dict) -> bool:
        changed = False
        for node in list(graph):
            if node.graph is not graph or not node.inputs or node.inputs[0] is None:
                continue
            src = node.inputs[0].producer()
            if src is None or src.graph is not graph or len(src.outputs) != 1:
                continue
            # a Sign copies a layout op that has other readers: the same data in another order,
            # so nothing is computed twice; not a MaxPool, whose other readers need the float pool
            # anyway, and whose output is smaller to binarize than its input
            shared_sign = is_bnnc(node, "Sign") and is_std(src, *_MOVES_ONLY)
            if only_reader(src.outputs[0]) is not node and not shared_sign:
                continue
            key = self._rewrite(graph, node, src)
            if key:
                stats[key] += 1
                changed = True
        return changed

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node, src: ir.Node) -> str:
        """Apply the first rule that fits ``src -> node``; the stat it counts, or ""."""
        if is_bnnc(node, "Sign") and is_std(src, *_LAYOUT):
            _swap_sign_up(graph, node, src)
            return "binarizers_moved"
        if is_std(node, "Pad", "Transpose") and is_std(src, "Reshape") and _reshape_to_transpose(graph, src):
            return "reshapes_as_transposes"
        if is_std(node, "Pad") and is_std(src, "Transpose") and _sink_transpose_below_pad(graph, src, node):
            return "transposes_sunk"
        same = is_std(node, "Transpose") and is_std(src, "Transpose") or is_std(node, "Reshape") and is_std(src, "Reshape", "Flatten")
        if same and _merge_pair(graph, src, node):
            return "pairs_merged"
        return ""
