"""Fold the float chain between a binary layer and the next binarizer into an integer rule.

A binary layer computes the exact integer s in [-K, K] per output channel c and, in float mode,
``t = alpha_c * s + b_c``. When t reaches a binarizer only through per-channel elementwise ops
(BatchNormalization, Add/Sub/Mul/Div by per-channel constants, Relu, PRelu, Clip, ...) and at most
one MaxPool, the binarized value is a function v_c(s) of s alone. s takes at most 2K+1 values, so
the exact v_c is tabulated at compile time by running the original float chain in onnxruntime on
every s (the decision matches onnxruntime's own arithmetic, ties at exactly 0 included), and the
table is stored as a 3-run rule (v_below if s < lo, v_mid if lo <= s <= hi, v_above if s > hi):
that covers thresholds, flipped directions (negative BatchNorm scales), constant channels, tie
values, and non-monotone chains such as PRelu with a negative slope. The layer then writes bits.

A MaxPool inside the chain moves onto the bits: if the ops before it (F1) and the whole rule (R)
are monotone in s, max-pooling t and then applying the rest equals pooling the bits with max
(where F1 and R run the same way) or min (where they run opposite ways) per channel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnnc.graph import Graph, attrs_of, node_attr, onnx_dtype
from bnnc.layers import update_layer
from bnnc.matching import bnnc_node, is_bnnc, is_std, only_reader
from bnnc.onnxrt import session
from bnnc.ops import packed_shape
from bnnc.pipeline import Pass, PassResult
from bnnc.weights import pack_dense

NAME = "fold-thresholds-into-binary-layers"
_ELEMENTWISE = ("BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu",
                "Clip", "Sigmoid", "Tanh", "HardSigmoid", "Neg", "Identity", "Softsign", "Elu", "Selu")
_LAYERS = ("BinaryConv", "BinaryDense")


def data_input(graph: Graph, node: onnx.NodeProto) -> str | None:
    """The input of a chain node that carries the layer's values: MaxPool's first; for the
    elementwise ops the one input that is not a constant (either side of an Add or a Mul), None
    when there is not exactly one."""
    if is_std(node, "MaxPool"):
        return node.input[0]
    ins = [i for i in node.input if i and graph.const(i) is None]
    return ins[0] if len(ins) == 1 else None


def _const_inputs_ok(graph: Graph, node: onnx.NodeProto, x: str, channels: int, rank: int) -> bool:
    """Every input other than ``x`` is a constant that varies at most along the channel axis."""
    for i in node.input:
        if not i or i == x:
            continue
        c = graph.const(i)
        if c is None:
            return False
        if node.op_type == "BatchNormalization":
            continue
        shape = (1,) * (rank - c.ndim) + tuple(c.shape)
        if any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
            return False
    return True


def find_chain(graph: Graph, binarize: onnx.NodeProto, prods: dict, cons: dict):
    """(layer, chain ops from the layer to the binarizer) or (None, reason)."""
    chain: list[onnx.NodeProto] = []
    x = binarize.input[0]
    while True:
        if not only_reader(cons, x, graph):
            return None, f"'{x}' has other readers"
        node = prods.get(x)
        if is_bnnc(node, *_LAYERS):
            if node_attr(node, "output", "float") != "float":
                return None, "layer already writes bits"
            return node, chain[::-1]
        if is_bnnc(node, "BinaryWeightConv", "BinaryWeightDense"):
            return None, f"'{x}' comes from binary-weight layer {node.name}, whose real input makes its output real"
        if node is None or not (is_std(node, *_ELEMENTWISE) or is_std(node, "MaxPool")):
            return None, f"'{x}' is not computed from a binary layer by per-channel ops"
        if is_std(node, "MaxPool") and (len(node.output) > 1 or any(is_std(n, "MaxPool") for n in chain)):
            return None, "more than one MaxPool, or MaxPool with indices"
        src = data_input(graph, node)
        shape = graph.shape(x)
        if src is None or shape is None or len(shape) < 2 or not (
                is_std(node, "MaxPool") or _const_inputs_ok(graph, node, src, shape[1], len(shape))):
            return None, f"{node.op_type} node {node.name} mixes in a value that is not a per-channel constant"
        chain.append(node)
        x = src


def _tabulate(graph: Graph, layer, chain, s: np.ndarray):
    """Run the chain (MaxPool skipped) on t = scale*s + bias; return (F1 before pool, u)."""
    scale = graph.const(layer.input[4]).astype(np.float32)
    bias = graph.const(layer.input[5]).astype(np.float32)
    c, n = scale.size, s.size
    t = scale[:, None] * s.astype(np.float32)[None, :] + bias[:, None]  # [C, n]
    rank = len(graph.shape(layer.output[0]))
    feed = t.reshape(1, c, n, 1) if rank == 4 else t.T.copy()
    ops, pre_pool, inits, x = [], None, {}, layer.output[0]
    for node in chain:
        if node.op_type == "MaxPool":
            pre_pool = x
            continue
        src = data_input(graph, node)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend([x if i == src else i for i in node.input])
        ops.append(copy)
        inits.update({i: graph.const(i) for i in node.input if i and graph.const(i) is not None})
        x = node.output[0]
    outs = [x] + ([pre_pool] if pre_pool and pre_pool not in (x, layer.output[0]) else [])
    res = _run(graph, ops, layer.output[0], feed, outs, inits)
    unflat = (lambda a: a.reshape(c, n)) if rank == 4 else (lambda a: a.T)
    u = unflat(res[0])
    f1 = unflat(res[1]) if len(res) > 1 else (u if pre_pool == x else None)
    if pre_pool == layer.output[0]:
        f1 = t
    return f1, u


def _run(graph, ops, x, feed, outs, inits):
    if not ops:
        return [feed]
    vi = lambda n, a: helper.make_tensor_value_info(n, onnx_dtype(a.dtype if hasattr(a, "dtype") else "float32"), None)  # noqa: E731
    g = helper.make_graph(ops, "chain", [helper.make_tensor_value_info(x, onnx_dtype("float32"), list(feed.shape))],
                          [vi(o, feed) for o in outs], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opsets.get("", 17))])
    model.ir_version = 8
    sess = session(model, what=f"the float chain after {ops[0].name}")
    return sess.run(outs, {x: feed})


def _monotone(a: np.ndarray) -> int:
    """+1 non-decreasing, -1 non-increasing, 0 constant, None neither (over axis 1, per row)."""
    d = np.diff(a, axis=1)
    up, down = np.all(d >= 0, axis=1), np.all(d <= 0, axis=1)
    return np.where(up & down, 0, np.where(up, 1, np.where(down, -1, 9)))


def fit_rules(v: np.ndarray, s: np.ndarray) -> np.ndarray | None:
    """Per-channel (lo, hi, v_below, v_mid, v_above) reproducing v[c, j] = rule(s[j])."""
    rules = np.zeros((v.shape[0], 5), np.int32)
    for c, row in enumerate(v):
        cuts = np.flatnonzero(np.diff(row)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts - 1, [row.size - 1]])
        if starts.size > 3:
            return None
        vals = row[starts]
        if starts.size == 1:
            rules[c] = (s[-1] + 1, s[-1], vals[0], vals[0], vals[0])
        elif starts.size == 2:
            rules[c] = (s[starts[1]], s[starts[1]] - 1, vals[0], vals[1], vals[1])
        else:
            rules[c] = (s[starts[1]], s[ends[1]], vals[0], vals[1], vals[2])
    return rules


def _all_values_reachable(layer) -> bool:
    """Zero padding, masks and ternary weights make every integer in [-K, K] reachable."""
    a = attrs_of(layer)
    padded = a.get("pad_value", 0) == 0 and any(a.get("pads", [0]))
    return bool(padded or layer.input[1] or layer.input[3])


def _fan_in(layer) -> int:
    a = attrs_of(layer)
    if layer.op_type == "BinaryDense":
        return int(a["k"])
    return int(a["cin"] // a.get("group", 1) * np.prod(a["kernel_shape"]))


def _sign_z(u: np.ndarray, zero: int) -> np.ndarray:
    return np.where(u > 0, 1, np.where(u < 0, -1, zero)).astype(np.int32)


def _drop_value(graph: Graph, name: str) -> None:
    """Remove a mask tensor that can no longer be nonzero-free: readers stop reading it."""
    for node in list(graph.consumers().get(name, ())):
        if is_std(node, "Reshape"):
            graph.replace([node], [])
            _drop_value(graph, node.output[0])
            continue
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = ""
        if is_bnnc(node, "BitMaxPool") and len(node.output) > 1:
            out = node.output[1]
            del node.output[1]
            _drop_value(graph, out)


class FoldThresholdsIntoBinaryLayers(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        stats = {"folded": 0, "pooled_on_bits": 0, "tie_channels": 0, "constant_channels": 0, "flipped_channels": 0}
        reasons: list[str] = []
        for b in [n for n in graph.nodes if is_bnnc(n, "Binarize")]:
            prods, cons = graph.producers(), graph.consumers()
            layer, chain = find_chain(graph, b, prods, cons)
            if layer is None:
                reasons.append(f"{b.name}: threshold not folded: {chain}")
                continue
            why = self._fold(graph, b, layer, chain, stats)
            if why:
                reasons.append(f"{b.name}: threshold not folded into {layer.name}: {why}")
        graph.prune()
        return PassResult(modified=stats["folded"] > 0, stats=stats, reasons=reasons)

    def _fold(self, graph: Graph, b, layer, chain, stats) -> str:
        k = _fan_in(layer)
        s_all = np.arange(-k, k + 1)
        s = s_all if _all_values_reachable(layer) else s_all[(s_all - k) % 2 == 0]
        f1, u = _tabulate(graph, layer, chain, s)
        v = _sign_z(u, int(node_attr(b, "zero", 0)))
        rules = fit_rules(v, s)
        if rules is None:
            return "the binarized value changes sign more than twice over s"
        pool = next((n for n in chain if is_std(n, "MaxPool")), None)
        invert = None
        if pool is not None:
            d1, dr = _monotone(f1), _monotone(v)
            if np.any(d1 == 9) or np.any(dr == 9):
                return "MaxPool between the layer and a non-monotone chain"
            invert = (d1 * dr) < 0
        out_mask = int(np.any(v == 0))
        self._rewrite(graph, b, layer, chain, rules, pool, invert, out_mask)
        stats["folded"] += 1
        stats["pooled_on_bits"] += int(pool is not None)
        stats["tie_channels"] += int(np.sum(np.any(v == 0, axis=1)))
        stats["constant_channels"] += int(np.sum(np.all(v == v[:, :1], axis=1)))
        stats["flipped_channels"] += int(np.sum(rules[:, 2] > rules[:, 4]))
        update_layer(graph, layer.name, output="bits", out_mask=out_mask)
        return ""

    def _rewrite(self, graph, b, layer, chain, rules, pool, invert, out_mask) -> None:
        rule = graph.add_const(rules, layer.name + "_rule")
        attrs = attrs_of(layer)
        attrs.update(output="bits", out_mask=out_mask)
        b_outs = list(b.output)
        new_nodes = []
        if pool is None:
            outs = b_outs[:1] + (b_outs[1:2] if out_mask else [])
        else:
            shape = graph.shape(layer.output[0])
            packed = packed_shape(shape)
            outs = [graph.unique_name(layer.output[0] + "_bits")]
            if out_mask:
                outs.append(graph.unique_name(layer.output[0] + "_nonzero"))
            for o in outs:
                graph.set_value(o, packed, "uint64")
            pa = attrs_of(pool)
            pattrs = {k: list(pa[k]) for k in ("kernel_shape", "strides", "pads", "dilations") if k in pa}
            inv = graph.add_const(pack_dense(invert), pool.name + "_invert") if invert.any() else ""
            new_nodes.append(bnnc_node("BitMaxPool", [outs[0], outs[1] if out_mask else "", inv],
                                       b_outs[:1] + (b_outs[1:2] if out_mask else []), pool.name + "_bits", NAME,
                                       ceil_mode=int(pa.get("ceil_mode", 0)), channels=int(shape[1]), **pattrs))
        inputs = list(layer.input[:4]) + [rule]
        new_layer = bnnc_node(layer.op_type, inputs, outs, layer.name, NAME, **attrs)
        graph.replace([layer], [new_layer] + new_nodes)
        graph.replace([b] + list(chain), [])
        if len(b_outs) > 1 and not out_mask:
            _drop_value(graph, b_outs[1])
