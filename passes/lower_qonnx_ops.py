"""Lower QONNX custom ops to standard ONNX ops with the same arithmetic.

The references in ``bnnc/qonnx.py`` define the semantics; each lowering performs the same float
operations in the same order, so onnxruntime on the lowered graph reproduces them exactly:

* ``Quant``: y = Div(x, scale) [+ zeropt]; q = rnd(Clip(y, lo, hi)) (signed 1-bit:
  q = Where(y >= 0, 1, -1)); out = (q [- zeropt]) * scale. A signed 1-bit Quant with zeropt 0 and a
  constant 0 < scale <= 1 is exactly a BipolarQuant (x / scale keeps the sign of x and cannot
  underflow to 0) and is lowered as one. ROUND is ONNX Round (half to even),
  CEIL/FLOOR are Ceil/Floor, toward/away from zero use Sign(y) * Floor/Ceil(Abs(y)), HALF_UP
  Sign(y) * Floor(Abs(y) + 0.5) and HALF_DOWN Sign(y) * Ceil(Abs(y) - 0.5).
* ``BipolarQuant(x, s)``: Where(GreaterOrEqual(x, 0), s, -s) with s a constant of x's dtype (0 maps
  to +s); Mul(Where(..., 1, -1), s) when s is not constant. Below opset 12, which has no
  GreaterOrEqual, Where(Less(x, 0), -s, s).
* ``MultiThreshold(x, T)``: Reshape x to [..., 1], compare with T laid out on the channel axis,
  Cast the booleans, ReduceSum the last axis, then * out_scale + out_bias.
* ``Trunc`` (v1 and v2, constant parameters): the formula of the reference with Div/Round/Clip.

A node whose parameters are not constant where the lowering needs them stays and says why.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from bnnc import qonnx
from bnnc.ir import add_const, attrs_of, const, dtype, ir_dtype, make_node, replace_value
from bnnc.pipeline import Pass, PassResult
from runtime.errors import BnncError

V = ir.Value


class _Emitter:
    """Creates the named, tagged nodes and constants that replace one QONNX node."""

    def __init__(self, graph: ir.Graph, node: ir.Node, opset: int, pass_name: str):
        self.graph, self.base, self.pass_name = graph, node.name, pass_name
        self.nodes: list[ir.Node] = []
        self.opset = opset
        self.dtype = np.dtype(dtype(node.inputs[0]) or "float32")

    def const(self, value, hint: str, dt=None) -> V:
        return add_const(self.graph, np.asarray(value, dtype=dt or self.dtype), f"{self.base}_{hint}")

    def op(self, op_type: str, inputs: list[V], hint: str, **attrs) -> V:
        node = make_node(self.graph, op_type, inputs, f"{self.base}_{hint}", self.pass_name, **attrs)
        self.nodes.append(node)
        return node.outputs[0]

    def ge(self, a: V, b: V, hint: str) -> V:
        if self.opset >= 12:
            return self.op("GreaterOrEqual", [a, b], hint)
        return self.op("Not", [self.op("Less", [a, b], hint + "_lt")], hint)

    def where_nonneg(self, x: V, pos: V, neg: V, hint: str) -> V:
        """pos where x >= 0 else neg, in the form canonicalize-binarizers reads as a binarizer."""
        if self.opset >= 12:
            return self.op("Where", [self.ge(x, self.const(0, "zero"), "ge"), pos, neg], hint)
        return self.op("Where", [self.op("Less", [x, self.const(0, "zero")], "lt"), neg, pos], hint)

    def reduce_sum_last(self, x: V, hint: str) -> V:
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.const([-1], "axes", np.int64)], hint, keepdims=0)
        return self.op("ReduceSum", [x], hint, axes=[-1], keepdims=0)


def _round(em: _Emitter, y: V, mode: str) -> V:
    """Emit the rounding of ``y`` by a QONNX rounding mode (see the module docstring)."""
    m = mode.upper()
    simple = {"ROUND": "Round", "HALF_EVEN": "Round", "CEIL": "Ceil", "FLOOR": "Floor"}
    if m in simple:
        return em.op(simple[m], [y], simple[m].lower())
    sign = em.op("Sign", [y], "sign")
    a = em.op("Abs", [y], "abs")
    if m == "HALF_UP":
        a = em.op("Add", [a, em.const(0.5, "half")], "add_half")
    elif m == "HALF_DOWN":
        a = em.op("Sub", [a, em.const(0.5, "half")], "sub_half")
    mag = em.op("Floor" if m in ("DOWN", "ROUND_TO_ZERO", "HALF_UP") else "Ceil", [a], "mag")
    return em.op("Mul", [sign, mag], "rounded")


def _const_param(em: _Emitter, value: V, hint: str) -> tuple[V, np.ndarray | None]:
    """A scale/zero-point input: a constant of x's dtype when constant, else the value itself."""
    v = const(value)
    if v is None:
        return value, None
    v = v.astype(em.dtype)
    return em.const(v, hint), v


def _lower_quant(node: ir.Node, em: _Emitter) -> V:
    a = attrs_of(node)
    x = node.inputs[0]
    scale, _ = _const_param(em, node.inputs[1], "scale")
    zp, zp_val = _const_param(em, node.inputs[2], "zeropt")
    has_zp = zp_val is None or bool(np.any(zp_val != 0))
    bits = qonnx.check_bitwidth(const(node.inputs[3]))
    s_val = const(node.inputs[1])
    if bits == 1 and a.get("signed", 1) and not has_zp and s_val is not None and np.all((s_val > 0) & (s_val <= 1)):
        # x / s keeps the sign of x and never underflows to 0 when 0 < s <= 1: a BipolarQuant
        s_val = s_val.astype(em.dtype)
        return em.where_nonneg(x, em.const(s_val, "pos"), em.const(-s_val, "neg"), "where")
    y = em.op("Div", [x, scale], "div")
    if has_zp:
        y = em.op("Add", [y, zp], "add_zeropt")
    if bits == 1 and a.get("signed", 1):
        q = em.where_nonneg(y, em.const(1, "one"), em.const(-1, "minus_one"), "q")
    else:
        lo, hi = qonnx.int_range(bool(a.get("signed", 1)), bool(a.get("narrow", 0)), bits)
        c = em.op("Clip", [y, em.const(lo, "lo"), em.const(hi, "hi")], "clip")
        q = _round(em, c, a.get("rounding_mode", "ROUND"))
    if has_zp:
        q = em.op("Sub", [q, zp], "sub_zeropt")
    return em.op("Mul", [q, scale], "mul")


def _lower_bipolar(node: ir.Node, em: _Emitter) -> V:
    x = node.inputs[0]
    s = const(node.inputs[1])
    if s is not None:
        s = s.astype(em.dtype)
        return em.where_nonneg(x, em.const(s, "pos"), em.const(-s, "neg"), "where")
    pm = em.where_nonneg(x, em.const(1, "one"), em.const(-1, "minus_one"), "sign")
    return em.op("Mul", [pm, node.inputs[1]], "mul")


def _lower_multithreshold(node: ir.Node, em: _Emitter) -> V:
    a = attrs_of(node)
    x = node.inputs[0]
    rank = len(x.shape)
    thr = const(node.inputs[1]).astype(em.dtype)
    axis = qonnx.channel_axis(rank, a.get("data_layout", ""))
    scale, bias = float(a.get("out_scale", 1.0)), float(a.get("out_bias", 0.0))
    if thr.shape[1] == 1 and scale != 0 and bias == -scale / 2:
        # one threshold and outputs ±scale/2: a binarizer of x - t (exact: for finite floats
        # x >= t exactly when fl(x - t) >= 0, by Sterbenz and gradual underflow)
        shape = [1] * rank
        shape[axis] = thr.shape[0]
        d = em.op("Sub", [x, em.const(thr.reshape(shape), "threshold")], "centered")
        return em.where_nonneg(d, em.const(scale / 2, "pos"), em.const(-scale / 2, "neg"), "where")
    shape = [1] * rank + [thr.shape[1]]
    shape[axis] = thr.shape[0]
    xr = em.op("Reshape", [x, em.const([0] * rank + [1], "shape", np.int64)], "expand")
    ge = em.ge(xr, em.const(thr.reshape(shape), "thresholds"), "ge")
    cnt = em.op("Cast", [ge], "cast", to=int(ir_dtype(em.dtype)))
    y = em.reduce_sum_last(cnt, "count")
    if scale != 1.0:
        y = em.op("Mul", [y, em.const(scale, "out_scale")], "scale")
    if bias != 0.0:
        y = em.op("Add", [y, em.const(bias, "out_bias")], "bias")
    return y


def _lower_trunc(node: ir.Node, em: _Emitter) -> V:
    a = attrs_of(node)
    x = node.inputs[0]
    p = [const(v) for v in node.inputs]
    scale, zp = p[1].astype(em.dtype), p[2].astype(em.dtype)
    mode = a.get("rounding_mode", "FLOOR")
    y = em.op("Round", [em.op("Add", [em.op("Div", [x, em.const(scale, "scale")], "div"), em.const(zp, "zeropt")],
                                  "add_zeropt")], "round")
    if len(node.inputs) == 5:
        step = em.dtype.type(2.0 ** (qonnx.check_bitwidth(p[3]) - qonnx.check_bitwidth(p[4])))
        y = _round(em, em.op("Div", [y, em.const(step, "step")], "shift"), mode)
        y = em.op("Sub", [y, em.const(zp, "zeropt_out")], "sub_zeropt")
        return em.op("Mul", [y, em.const(scale, "scale_out")], "mul")
    step = qonnx.trunc_shift(p[1], p[4]).astype(em.dtype)
    lo, hi = qonnx.int_range(bool(a.get("signed", 1)), bool(a.get("narrow", 0)), qonnx.check_bitwidth(p[-1]))
    y = em.op("Clip", [em.op("Div", [y, em.const(step, "step")], "shift"), em.const(lo, "lo"), em.const(hi, "hi")],
              "clip")
    y = em.op("Sub", [_round(em, y, mode), em.const(zp / step, "zeropt_out")], "sub_zeropt")
    return em.op("Mul", [y, em.const(p[4].astype(em.dtype), "out_scale")], "mul")


_LOWER = {
    "Quant": _lower_quant,
    "IntQuant": _lower_quant,
    "BipolarQuant": _lower_bipolar,
    "MultiThreshold": _lower_multithreshold,
    "Trunc": _lower_trunc,
}


def match(node: ir.Node) -> str | None:
    """None when ``node`` can be lowered, else the reason it cannot."""
    op = node.op_type
    if op not in _LOWER:
        return f"QONNX op {op} has no lowering"
    consts = [const(v) for v in node.inputs]
    dt = dtype(node.inputs[0])
    if dt is not None and not np.issubdtype(np.dtype(dt), np.floating):
        return f"input '{node.inputs[0].name}' has dtype {dt}, not float"
    try:
        if op in ("Quant", "IntQuant"):
            if consts[3] is None:
                return "bit width is not a constant"
            qonnx.check_bitwidth(consts[3])
            qonnx.rounding(attrs_of(node).get("rounding_mode", "ROUND"))
        elif op == "MultiThreshold":
            if consts[1] is None or consts[1].ndim != 2:
                return "thresholds are not a constant [C, T] tensor"
            if node.inputs[0].shape is None:
                return "the rank of the input is unknown"
        elif op == "Trunc":
            if len(node.inputs) not in (5, 6, 7) or any(c is None for c in consts[1:]):
                return "Trunc parameters are not all constant (or the input count is not 5, 6 or 7)"
            qonnx.rounding(attrs_of(node).get("rounding_mode", "FLOOR"))
    except BnncError as e:
        return str(e)
    return _check_param_dtypes(node)


def _check_param_dtypes(node: ir.Node) -> str | None:
    x_dtype = dtype(node.inputs[0])
    for v in node.inputs[1:3] if node.op_type != "MultiThreshold" else ():
        if v is not None and v.const_value is None and dtype(v) != x_dtype:
            return f"non-constant parameter '{v.name}' has dtype {dtype(v)}, input has {x_dtype}"
    return None


class LowerQonnxOpsToOnnx(Pass):
    """See the module docstring."""

    name = "lower-qonnx-ops"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", 11)
        stats: Counter[str] = Counter()
        reasons: list[str] = []
        for node in list(graph):
            if node.domain not in qonnx.QONNX_DOMAINS:
                continue
            reason = match(node)
            if reason is not None:
                reasons.append(f"{node.name}: {node.op_type} not lowered: {reason}")
                continue
            em = _Emitter(graph, node, opset, self.name)
            out = _LOWER[node.op_type](node, em)
            graph.insert_before(node, em.nodes)
            replace_value(graph, node.outputs[0], out, rename=True)
            graph.remove(node, safe=True)
            stats[node.op_type] += 1
        return PassResult(model, bool(stats), dict(stats), reasons)
