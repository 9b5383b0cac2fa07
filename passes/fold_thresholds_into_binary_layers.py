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
import onnx_ir as ir
from onnx import helper, numpy_helper

from bnnc.ir import (
    add_const,
    adopt_name,
    attrs_of,
    bnnc_node,
    const,
    data_inputs,
    is_bnnc,
    is_std,
    new_value,
    node_attr,
    only_reader,
    prune,
    remove,
    replace_value,
    set_attrs,
    shape,
)
from bnnc.layers import layer_of
from bnnc.matching import per_channel
from bnnc.onnxrt import session
from bnnc.ops import binarize, packed_shape
from bnnc.pipeline import Pass, PassResult
from runtime.bitpack import pack_bits

NAME = "fold-thresholds-into-binary-layers"
_ELEMENTWISE = ("BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu",
                "Clip", "Sigmoid", "Tanh", "HardSigmoid", "Neg", "Identity", "Softsign", "Elu", "Selu")
_LAYERS = ("BinaryConv", "BinaryDense")


def data_input(node: ir.Node) -> ir.Value | None:
    """The input of a chain node that carries the layer's values: MaxPool's first; for the
    elementwise ops the one input that is not a constant (either side of an Add or a Mul), None
    when there is not exactly one."""
    if is_std(node, "MaxPool"):
        return node.inputs[0]
    ins = data_inputs(node)
    return ins[0] if len(ins) == 1 else None


def _const_inputs_ok(node: ir.Node, x: ir.Value, channels: int, rank: int) -> bool:
    """Every input other than ``x`` is a constant that varies at most along the channel axis."""
    for v in node.inputs:
        if v is None or v is x:
            continue
        if const(v) is None:
            return False
        if node.op_type != "BatchNormalization" and per_channel(v, channels, rank) is None:
            return False
    return True


def find_chain(binarize: ir.Node):
    """(layer, chain ops from the layer to the binarizer) or (None, reason)."""
    chain: list[ir.Node] = []
    x = binarize.inputs[0]
    while True:
        if only_reader(x) is None:
            return None, f"'{x.name}' has other readers"
        node = x.producer()
        if is_bnnc(node, *_LAYERS):
            if node_attr(node, "output", "float") != "float":
                return None, "layer already writes bits"
            return node, chain[::-1]
        if is_bnnc(node, "BinaryWeightConv", "BinaryWeightDense"):
            return None, f"'{x.name}' comes from binary-weight layer {node.name}, whose real input makes its output real"
        if node is None or not (is_std(node, *_ELEMENTWISE) or is_std(node, "MaxPool")):
            return None, f"'{x.name}' is not computed from a binary layer by per-channel ops"
        if is_std(node, "MaxPool") and (len(node.outputs) > 1 or any(is_std(n, "MaxPool") for n in chain)):
            return None, "more than one MaxPool, or MaxPool with indices"
        src = data_input(node)
        s = shape(x)
        if src is None or s is None or len(s) < 2 or not (
                is_std(node, "MaxPool") or _const_inputs_ok(node, src, s[1], len(s))):
            return None, f"{node.op_type} node {node.name} mixes in a value that is not a per-channel constant"
        chain.append(node)
        x = src


def _tabulate(model: ir.Model, layer: ir.Node, chain: list[ir.Node], s: np.ndarray):
    """Run the chain (MaxPool skipped) on t = scale*s + bias; return (F1 before pool, u)."""
    scale = const(layer.inputs[4]).astype(np.float32)
    bias = const(layer.inputs[5]).astype(np.float32)
    c, n = scale.size, s.size
    t = scale[:, None] * s.astype(np.float32)[None, :] + bias[:, None]  # [C, n]
    y = layer.outputs[0]
    rank = len(shape(y))
    feed = t.reshape(1, c, n, 1) if rank == 4 else t.T.copy()
    ops, pre_pool, inits, x = [], None, {}, y.name
    for node in chain:
        if node.op_type == "MaxPool":
            pre_pool = x
            continue
        src = data_input(node)
        proto = ir.serde.serialize_node(node)
        del proto.input[:]
        proto.input.extend([x if v is src else (v.name if v is not None else "") for v in node.inputs])
        ops.append(proto)
        inits.update({v.name: const(v) for v in node.inputs if v is not None and v.const_value is not None})
        x = node.outputs[0].name
    outs = [x] + ([pre_pool] if pre_pool and pre_pool not in (x, y.name) else [])
    res = _run(model, ops, y.name, feed, outs, inits)
    unflat = (lambda a: a.reshape(c, n)) if rank == 4 else (lambda a: a.T)
    u = unflat(res[0])
    f1 = unflat(res[1]) if len(res) > 1 else (u if pre_pool == x else None)
    if pre_pool == y.name:
        f1 = t
    return f1, u


def _run(model: ir.Model, ops, x: str, feed: np.ndarray, outs: list[str], inits: dict) -> list[np.ndarray]:
    if not ops:
        return [feed]
    f32 = onnx.TensorProto.FLOAT
    g = helper.make_graph(ops, "chain", [helper.make_tensor_value_info(x, f32, list(feed.shape))],
                          [helper.make_tensor_value_info(o, f32, None) for o in outs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", model.opset_imports.get("", 17))])
    m.ir_version = 8
    return session(m, what=f"the float chain after {ops[0].name}").run(outs, {x: feed})


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


def _all_values_reachable(layer: ir.Node) -> bool:
    """Zero padding, masks and ternary weights make every integer in [-K, K] reachable."""
    a = attrs_of(layer)
    padded = a.get("pad_value", 0) == 0 and any(a.get("pads", [0]))
    return bool(padded or layer.inputs[1] is not None or layer.inputs[3] is not None)


def _fan_in(layer: ir.Node) -> int:
    a = attrs_of(layer)
    if layer.op_type == "BinaryDense":
        return int(a["k"])
    return int(a["cin"] // a.get("group", 1) * np.prod(a["kernel_shape"]))


def _drop_value(graph: ir.Graph, value: ir.Value) -> None:
    """Remove a mask tensor that can no longer be nonzero-free: readers stop reading it."""
    for use in list(value.uses()):
        node = use.node
        if is_std(node, "Reshape"):
            _drop_value(graph, node.outputs[0])
            remove(graph, [node])
            continue
        node.replace_input_with(use.idx, None)
        if is_bnnc(node, "BitMaxPool") and len(node.outputs) > 1:
            out = node.outputs[1]
            _drop_value(graph, out)
            node.resize_outputs(1)


class FoldThresholdsIntoBinaryLayers(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats = {"folded": 0, "pooled_on_bits": 0, "tie_channels": 0, "constant_channels": 0, "flipped_channels": 0}
        reasons: list[str] = []
        for b in [n for n in graph if is_bnnc(n, "Binarize")]:
            layer, chain = find_chain(b)
            if layer is None:
                reasons.append(f"{b.name}: threshold not folded: {chain}")
                continue
            why = self._fold(model, b, layer, chain, stats)
            if why:
                reasons.append(f"{b.name}: threshold not folded into {layer.name}: {why}")
        prune(graph)
        return PassResult(model, stats["folded"] > 0, stats, reasons)

    def _fold(self, model: ir.Model, b: ir.Node, layer: ir.Node, chain: list[ir.Node], stats: dict) -> str:
        k = _fan_in(layer)
        s_all = np.arange(-k, k + 1)
        s = s_all if _all_values_reachable(layer) else s_all[(s_all - k) % 2 == 0]
        f1, u = _tabulate(model, layer, chain, s)
        v = binarize(u, int(node_attr(b, "zero", 0)))
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
        self._rewrite(model.graph, b, layer, chain, rules, pool, invert, out_mask)
        stats["folded"] += 1
        stats["pooled_on_bits"] += int(pool is not None)
        stats["tie_channels"] += int(np.sum(np.any(v == 0, axis=1)))
        stats["constant_channels"] += int(np.sum(np.all(v == v[:, :1], axis=1)))
        stats["flipped_channels"] += int(np.sum(rules[:, 2] > rules[:, 4]))
        facts = layer_of(layer)
        if facts is not None:
            facts.output, facts.out_mask = "bits", out_mask
        return ""

    def _rewrite(self, graph: ir.Graph, b, layer, chain, rules, pool, invert, out_mask) -> None:
        """The layer writes the Binarize's bits (through a BitMaxPool when the chain pools)."""
        rule = add_const(graph, rules, layer.name + "_rule")
        b_outs = list(b.outputs)[: 1 + out_mask]
        y = layer.outputs[0]
        s = shape(y)
        new_outs = [new_value(graph, y.name + "_bits", packed_shape(s), "uint64")]
        if out_mask:
            new_outs.append(new_value(graph, y.name + "_nonzero", packed_shape(s), "uint64"))
        new_layer = bnnc_node(graph, layer.op_type, [*layer.inputs[:4], rule], layer.name, NAME, outputs=new_outs,
                              **attrs_of(layer))
        set_attrs(new_layer, output="bits", out_mask=out_mask)
        new_layer.meta.update(layer.meta)
        nodes, finals = [new_layer], new_outs
        if pool is not None:
            pa = attrs_of(pool)
            pattrs = {k: list(pa[k]) for k in ("kernel_shape", "strides", "pads", "dilations") if k in pa}
            inv = add_const(graph, pack_bits(invert), pool.name + "_invert") if invert.any() else None
            finals = [new_value(graph, o.name + "_pooled", shape(o), "uint64") for o in b_outs]
            nodes.append(bnnc_node(graph, "BitMaxPool", [new_outs[0], new_outs[1] if out_mask else None, inv],
                                   pool.name + "_bits", NAME, outputs=finals, ceil_mode=int(pa.get("ceil_mode", 0)),
                                   channels=int(s[1]), **pattrs))
        graph.insert_before(layer, nodes)
        for old, new in zip(b_outs, finals):
            replace_value(graph, old, new, rename=True)
        if len(b.outputs) > 1 and not out_mask:
            _drop_value(graph, b.outputs[1])
        remove(graph, [b, *chain[::-1], layer])
        adopt_name(new_layer, layer)
