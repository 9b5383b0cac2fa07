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
import onnx
from onnx import helper

from bnnc.graph import Graph, node_attr
from bnnc.matching import is_bnnc, is_std, only_reader, tag
from bnnc.pipeline import Pass, PassResult

NAME = "move-binarizers-before-layout-ops"
_LAYOUT = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool")


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return tag(out, NAME)


def _swap_sign_up(graph: Graph, sign: onnx.NodeProto, lay: onnx.NodeProto) -> None:
    """Sign(L(x)) -> L(Sign(x)); the final output keeps the Sign's name."""
    x = lay.input[0]
    mid = graph.unique_name(sign.output[0] + "_pre_layout")
    new_sign, new_lay = _copy(sign), _copy(lay)
    new_sign.input[0], new_sign.output[0] = x, mid
    new_lay.input[0], new_lay.output[0] = mid, sign.output[0]
    graph.set_value(mid, graph.shape(x), graph.dtype(x) or "float32")
    graph.replace([lay, sign], [new_sign, new_lay])


def _perm(node: onnx.NodeProto, rank: int) -> list[int]:
    return list(node_attr(node, "perm", list(range(rank))[::-1]))


def _sink_transpose_below_pad(graph: Graph, tr: onnx.NodeProto, pad: onnx.NodeProto) -> bool:
    """Pad(T_p(x), pads) -> T_p(Pad(x, pads permuted back))."""
    pads = graph.const(pad.input[1]) if len(pad.input) > 1 else None
    if pads is None or (len(pad.input) > 3 and pad.input[3]) or node_attr(pad, "mode", "constant") != "constant":
        return False
    shape = graph.shape(tr.input[0])
    if shape is None:
        return False
    rank = len(shape)
    p = _perm(tr, rank)
    begin, end = [0] * rank, [0] * rank
    for i in range(rank):
        begin[p[i]], end[p[i]] = int(pads[i]), int(pads[rank + i])
    new_pads = graph.add_const(np.array(begin + end, dtype="int64"), pad.name + "_pads_nchw")
    mid = graph.unique_name(pad.output[0] + "_pre_transpose")
    new_pad = _copy(pad)
    new_pad.input[0], new_pad.input[1], new_pad.output[0] = tr.input[0], new_pads, mid
    new_tr = _copy(tr)
    new_tr.input[0], new_tr.output[0] = mid, pad.output[0]
    out_shape = [s + b + e for s, b, e in zip(shape, begin, end)]
    graph.set_value(mid, out_shape, graph.dtype(tr.input[0]) or "float32")
    graph.replace([tr, pad], [new_pad, new_tr])
    return True


def _merge_pair(graph: Graph, first: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    """Transpose∘Transpose and Reshape∘Reshape become one node, or none."""
    x = first.input[0]
    shape = graph.shape(x)
    if shape is None:
        return False
    if first.op_type == "Transpose":
        p1, p2 = _perm(first, len(shape)), _perm(second, len(shape))
        perm = [p1[i] for i in p2]
        if perm == list(range(len(shape))):
            graph.replace([first, second], [])
            graph.rename_uses(second.output[0], x)
            return True
        new = tag(helper.make_node("Transpose", [x], [second.output[0]], name=second.name + "_merged", perm=perm), NAME)
    else:
        out_shape = graph.shape(second.output[0])
        if out_shape is None:
            return False
        if tuple(out_shape) == tuple(shape):
            graph.replace([first, second], [])
            graph.rename_uses(second.output[0], x)
            return True
        new = _copy(second)
        new.input[0] = x
    graph.replace([first, second], [new])
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


def _reshape_to_transpose(graph: Graph, node: onnx.NodeProto) -> bool:
    perm = transpose_equivalent(graph.shape(node.input[0]), graph.shape(node.output[0]))
    if perm is None:
        return False
    new = tag(helper.make_node("Transpose", [node.input[0]], [node.output[0]], name=node.name + "_as_transpose", perm=perm), NAME)
    graph.replace([node], [new])
    return True


class MoveBinarizersBeforeLayoutOps(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        stats = {"binarizers_moved": 0, "transposes_sunk": 0, "pairs_merged": 0, "reshapes_as_transposes": 0}
        while self._step(graph, stats):
            pass
        return PassResult(modified=any(stats.values()), stats=stats)

    def _step(self, graph: Graph, stats: dict) -> bool:
        prods, cons = graph.producers(), graph.consumers()
        for node in graph.nodes:
            src = prods.get(node.input[0]) if node.input else None
            if src is None or not only_reader(cons, src.output[0], graph) or len(src.output) != 1:
                continue
            if is_bnnc(node, "Sign") and is_std(src, *_LAYOUT):
                _swap_sign_up(graph, node, src)
                stats["binarizers_moved"] += 1
                return True
            if is_std(node, "Pad", "Transpose") and is_std(src, "Reshape") and _reshape_to_transpose(graph, src):
                stats["reshapes_as_transposes"] += 1
                return True
            if is_std(node, "Pad") and is_std(src, "Transpose") and _sink_transpose_below_pad(graph, src, node):
                stats["transposes_sunk"] += 1
                return True
            same = is_std(node, "Transpose") and is_std(src, "Transpose") or is_std(node, "Reshape") and is_std(src, "Reshape", "Flatten")
            if same and _merge_pair(graph, src, node):
                stats["pairs_merged"] += 1
                return True
        return False
