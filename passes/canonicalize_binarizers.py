"""Rewrite every binarizer idiom into one ``bnnc.Sign(x; zero, scale)`` node.

``bnnc.Sign`` computes ``scale * sign_z(x)`` where ``sign_z(x)`` is +1 for x > 0, -1 for x < 0
and ``zero`` (one of +1, -1, 0) for x == 0. The idioms and what they mean at 0:

    Sign(x)                                  zero = 0   (ONNX, torch.sign)
    Sign(Add(Sign(x), c)), 0 < |c| < 1       zero = sign(c)   (Larq ste_sign via tf2onnx: +1)
    Where(Equal(S, 0), a, S), S = Sign(x)    zero = a in {+1, -1}   (bitorch)
    Where(GreaterOrEqual(x, 0), a, -a)       zero = +1, scale = a   (BipolarQuant lowered)
    Where(Greater(x, 0), a, -a)              zero = -1, scale = a
    Where(Less(x, 0), -a, a)                 zero = +1, scale = a
    Where(LessOrEqual(x, 0), -a, a)          zero = -1, scale = a
    Add(Sub(S, P), P), S a binarizer         S   (straight-through trick, Bi-Real Net)
    Mul(S, k), S a binarizer, k a scalar     scale *= k
    Sign_z(Clip(x, lo, hi)), lo < 0 < hi     Sign_z(x)   (the clip never changes a sign)

Patterns compose, so the rewrite runs to a fixed point. The old nodes are left for pruning.
"""

from __future__ import annotations

import onnx

from bnnc.graph import Graph, node_attr
from bnnc.matching import bnnc_node, is_bnnc, is_std, only_reader, scalar, uniform
from bnnc.pipeline import Pass, PassResult

NAME = "canonicalize-binarizers"
_CMP_ZERO = {"GreaterOrEqual": (1, 1), "Greater": (-1, 1), "Less": (1, -1), "LessOrEqual": (-1, -1)}


def _sign_args(graph: Graph, prods: dict, name: str) -> tuple[str, int, float] | None:
    """If ``name`` is the output of a recognised binarizer, return (x, zero, scale)."""
    node = prods.get(name)
    if node is None:
        return None
    if is_bnnc(node, "Sign"):
        return node.input[0], int(node_attr(node, "zero", 0)), float(node_attr(node, "scale", 1.0))
    if is_std(node, "Sign") and graph.const(node.input[0]) is None:
        inner = _lifted_sign(graph, prods, node.input[0])
        return inner if inner is not None else (node.input[0], 0, 1.0)
    if is_std(node, "Where"):
        return _where_sign(graph, prods, node)
    if is_std(node, "Add") and len(node.input) == 2:
        return _straight_through(graph, prods, node)
    if is_std(node, "Mul"):
        for a, b in (node.input, node.input[::-1]):
            k, inner = scalar(graph, b), _sign_args(graph, prods, a) if graph.const(a) is None else None
            if k is not None and inner is not None and k != 0:
                return inner[0], inner[1], inner[2] * k
    return None


def _lifted_sign(graph: Graph, prods: dict, name: str):
    """Sign(Add(Sign(x), c)) with 0 < |c| < 1: the inner part, as (x, sign(c), 1)."""
    add = prods.get(name)
    if not is_std(add, "Add"):
        return None
    for a, b in (add.input, add.input[::-1]):
        c = scalar(graph, b)
        inner = _sign_args(graph, prods, a) if c is not None and 0 < abs(c) < 1 else None
        if inner is not None and inner[1] == 0 and inner[2] == 1.0:
            return inner[0], 1 if c > 0 else -1, 1.0
    return None


def _where_sign(graph: Graph, prods: dict, where: onnx.NodeProto):
    cond, a, b = where.input
    test = prods.get(cond)
    if is_std(test, "Equal"):  # Where(Equal(S, 0), v, S)
        s_name = test.input[0] if scalar(graph, test.input[1]) == 0 else test.input[1]
        v = scalar(graph, a)
        if b == s_name and v in (1.0, -1.0) and scalar(graph, test.input[0] if s_name == test.input[1] else test.input[1]) == 0:
            inner = _sign_args(graph, prods, s_name)
            if inner is not None and inner[1] == 0 and inner[2] == 1.0:
                return inner[0], int(v), 1.0
        return None
    if not (is_std(test, *_CMP_ZERO) and scalar(graph, test.input[1]) == 0):
        return None
    va, vb = uniform(graph, a), uniform(graph, b)
    if va is None or vb is None or va != -vb or va == 0:
        return None
    zero, positive_branch = _CMP_ZERO[test.op_type]
    scale = va if positive_branch == 1 else vb
    if graph.shape(a) not in (None, ()) and graph.const(a).size > 1 and graph.shape(where.output[0]) != graph.shape(test.input[0]):
        return None
    return test.input[0], zero, scale


def _straight_through(graph: Graph, prods: dict, add: onnx.NodeProto):
    """Add(Sub(S, P), P) or Add(P, Sub(S, P)) = S exactly in real arithmetic."""
    for a, b in (add.input, add.input[::-1]):
        sub = prods.get(a)
        if is_std(sub, "Sub") and sub.input[1] == b:
            return _sign_args(graph, prods, sub.input[0])
    return None


def _strip_clip(graph: Graph, prods: dict, x: str) -> str:
    clip = prods.get(x)
    while is_std(clip, "Clip"):
        lo = scalar(graph, clip.input[1]) if len(clip.input) > 1 and clip.input[1] else node_attr(clip, "min")
        hi = scalar(graph, clip.input[2]) if len(clip.input) > 2 and clip.input[2] else node_attr(clip, "max")
        if lo is None or hi is None or not lo < 0 < hi:
            break
        x = clip.input[0]
        clip = prods.get(x)
    return x


class CanonicalizeBinarizers(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        counts: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            prods = graph.producers()
            for node in list(graph.nodes):
                if is_bnnc(node, "Sign"):
                    x = _strip_clip(graph, prods, node.input[0])
                    if x != node.input[0]:
                        node.input[0] = x
                        counts["clip_removed"] = counts.get("clip_removed", 0) + 1
                        changed = True
                    continue
                args = _sign_args(graph, prods, node.output[0]) if len(node.output) == 1 else None
                if args is None:
                    continue
                x, zero, scale = args
                new = bnnc_node("Sign", [x], [node.output[0]], node.name + "_sign", NAME, zero=zero, scale=scale)
                graph.replace([node], [new])
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
                changed = True
                break
        dropped = graph.prune()
        n = sum(v for k, v in counts.items() if k != "clip_removed")
        stats = {"binarizers": sum(1 for x in graph.nodes if is_bnnc(x, "Sign")), "rewrites": n, **counts, "pruned": dropped}
        return PassResult(modified=bool(counts), stats=stats)


__all__ = ["CanonicalizeBinarizers", "only_reader"]
