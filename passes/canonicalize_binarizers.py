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

Patterns compose, so the rewrite sweeps the graph in order until nothing changes (one sweep
per nesting level). The old nodes are left for pruning.
"""

from __future__ import annotations

import onnx_ir as ir

from bnnc.ir import bnnc_node, const, is_bnnc, is_std, node_attr, prune, replace_node, scalar, shape, uniform
from bnnc.pipeline import Pass, PassResult

NAME = "canonicalize-binarizers"
_CMP_ZERO = {"GreaterOrEqual": (1, 1), "Greater": (-1, 1), "Less": (1, -1), "LessOrEqual": (-1, -1)}
Args = tuple[ir.Value, int, float]  # (x, zero, scale) of scale * sign_z(x)


def _sign_args(v: ir.Value | None) -> Args | None:
    """If ``v`` is the output of a recognised binarizer, return (x, zero, scale)."""
    node = v.producer() if v is not None else None
    if node is None:
        return None
    if is_bnnc(node, "Sign"):
        return node.inputs[0], int(node_attr(node, "zero", 0)), float(node_attr(node, "scale", 1.0))
    if is_std(node, "Sign") and const(node.inputs[0]) is None:
        inner = _lifted_sign(node.inputs[0])
        return inner if inner is not None else (node.inputs[0], 0, 1.0)
    if is_std(node, "Where") and len(node.inputs) == 3:
        return _where_sign(node)
    if is_std(node, "Add") and len(node.inputs) == 2:
        return _straight_through(node)
    if is_std(node, "Mul") and len(node.inputs) == 2:
        for a, b in (node.inputs, node.inputs[::-1]):
            k, inner = scalar(b), _sign_args(a) if const(a) is None else None
            if k is not None and inner is not None and k != 0:
                return inner[0], inner[1], inner[2] * k
    return None


def _lifted_sign(v: ir.Value) -> Args | None:
    """Sign(Add(Sign(x), c)) with 0 < |c| < 1: the inner part, as (x, sign(c), 1)."""
    add = v.producer()
    if not is_std(add, "Add") or len(add.inputs) != 2:
        return None
    for a, b in (add.inputs, add.inputs[::-1]):
        c = scalar(b)
        inner = _sign_args(a) if c is not None and 0 < abs(c) < 1 else None
        if inner is not None and inner[1] == 0 and inner[2] == 1.0:
            return inner[0], 1 if c > 0 else -1, 1.0
    return None


def _where_sign(where: ir.Node) -> Args | None:
    cond, a, b = where.inputs
    test = cond.producer() if cond is not None else None
    if is_std(test, "Equal"):  # Where(Equal(S, 0), v, S)
        s_val, zero_val = (test.inputs[0], test.inputs[1]) if scalar(test.inputs[1]) == 0 else (test.inputs[1], test.inputs[0])
        v = scalar(a)
        if b is s_val and v in (1.0, -1.0) and scalar(zero_val) == 0:
            inner = _sign_args(s_val)
            if inner is not None and inner[1] == 0 and inner[2] == 1.0:
                return inner[0], int(v), 1.0
        return None
    if not (is_std(test, *_CMP_ZERO) and scalar(test.inputs[1]) == 0):
        return None
    va, vb = uniform(a), uniform(b)
    if va is None or vb is None or va != -vb or va == 0:
        return None
    zero, positive_branch = _CMP_ZERO[test.op_type]
    scale = va if positive_branch == 1 else vb
    if const(a).size > 1 and shape(where.outputs[0]) != shape(test.inputs[0]):
        return None  # the branches broadcast the result beyond x's shape
    return test.inputs[0], zero, scale


def _straight_through(add: ir.Node) -> Args | None:
    """Add(Sub(S, P), P) or Add(P, Sub(S, P)) = S exactly in real arithmetic."""
    for a, b in (add.inputs, add.inputs[::-1]):
        sub = a.producer() if a is not None else None
        if is_std(sub, "Sub") and sub.inputs[1] is b:
            return _sign_args(sub.inputs[0])
    return None


def _strip_clip(x: ir.Value) -> ir.Value:
    clip = x.producer()
    while is_std(clip, "Clip"):
        ins = clip.inputs
        lo = scalar(ins[1]) if len(ins) > 1 and ins[1] is not None else node_attr(clip, "min")
        hi = scalar(ins[2]) if len(ins) > 2 and ins[2] is not None else node_attr(clip, "max")
        if lo is None or hi is None or not lo < 0 < hi:
            break
        x = ins[0]
        clip = x.producer()
    return x


class CanonicalizeBinarizers(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        counts: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for node in list(graph):
                if node.graph is not graph:
                    continue  # replaced earlier in this sweep
                if is_bnnc(node, "Sign"):
                    x = _strip_clip(node.inputs[0])
                    if x is not node.inputs[0]:
                        node.replace_input_with(0, x)
                        counts["clip_removed"] = counts.get("clip_removed", 0) + 1
                        changed = True
                    continue
                args = _sign_args(node.outputs[0]) if len(node.outputs) == 1 else None
                if args is None:
                    continue
                x, zero, scale = args
                new = bnnc_node(graph, "Sign", [x], node.name + "_sign", NAME, zero=zero, scale=scale)
                replace_node(graph, node, [new], new.outputs)
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
                changed = True
        dropped = prune(graph)
        n = sum(v for k, v in counts.items() if k != "clip_removed")
        stats = {"binarizers": sum(1 for x in graph if is_bnnc(x, "Sign")), "rewrites": n, **counts, "pruned": dropped}
        return PassResult(model, bool(counts), stats)
