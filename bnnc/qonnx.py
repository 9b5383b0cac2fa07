"""QONNX op semantics: numpy references and a node-by-node reference executor.

QONNX graphs (Brevitas ``export_qonnx``, FINN) use custom ops in the domain
``qonnx.custom_op.general`` (older files: ``finn.custom_op.general``) that onnxruntime cannot run.
The references below define what bnnc means by them; ``lower-qonnx-ops`` rewrites them into
standard ops with the same arithmetic, ``fold-constants`` evaluates them on constant inputs, and
the tests compare both against these functions. All arithmetic is in the input's dtype (float32).

* ``Quant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)`` (``IntQuant`` is the same op):
  q = rnd(clip(x / scale + zeropt, lo, hi)), y = (q - zeropt) * scale, with [lo, hi] the integer
  range of ``bitwidth`` bits (signed: [-2^(b-1), 2^(b-1) - 1], narrow raises lo by 1; unsigned:
  [0, 2^b - 1], narrow lowers hi by 1). Clipping before rounding equals rounding before clipping
  because lo and hi are integers. A signed 1-bit Quant is bipolar: q = +1 if x/scale + zeropt >= 0
  else -1 (what qonnx does, since Brevitas exports binary quantizers that way).
* ``BipolarQuant(x, scale)``: y = scale where x >= 0 (so 0 -> +scale), else -scale.
* ``MultiThreshold(x, thresholds; out_scale, out_bias, data_layout)``:
  y = out_bias + out_scale * #{t : x >= thresholds[c, t]} for x in channel c (thresholds is
  [C, T] or [1, T]); the channel axis is where "C" stands in ``data_layout`` ("NCHW", "NHWC", "NC",
  "NWC"...), or without a layout 1 for rank 2 and 4 and 2 for rank 3. Computed in float32 (qonnx
  computes out_scale * count + out_bias in float64; the two agree for the usual power-of-two scales).
* ``Trunc``: v1 ``(x, scale, zeropt, in_bits, out_bits)``:
  y = (rnd(round(x/scale + zeropt) / 2^(in_bits - out_bits)) - zeropt) * scale;
  v2 ``(x, scale, zeropt, in_bits, out_scale, out_bits)`` with s = 2^round(log2(out_scale/scale)):
  y = (rnd(clip(round(x/scale + zeropt) / s, lo, hi)) - zeropt / s) * out_scale (older exports
  put an unused out_zeropt before out_bits: 7 inputs).

Rounding modes: ROUND (= HALF_EVEN, ONNX Round), CEIL, FLOOR, UP (away from zero), DOWN and
ROUND_TO_ZERO (toward zero), HALF_UP = sign(y) * floor(|y| + 0.5) (ties away from zero),
HALF_DOWN = sign(y) * ceil(|y| - 0.5) (ties toward zero), as qonnx computes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bnnc.onnxrt import session
from runtime.errors import BnncError

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")
QONNX_OPS = ("Quant", "IntQuant", "BipolarQuant", "MultiThreshold", "Trunc")
ROUNDING_MODES = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "ROUND_TO_ZERO", "HALF_UP", "HALF_DOWN")


def is_qonnx(node: onnx.NodeProto) -> bool:
    return node.domain in QONNX_DOMAINS


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode("utf-8") if isinstance(v, bytes) else v
    return out


def int_range(signed: bool, narrow: bool, bitwidth: int) -> tuple[int, int]:
    """The integer range [lo, hi] of a ``bitwidth``-bit quantizer."""
    if signed:
        return -(2 ** (bitwidth - 1)) + int(bool(narrow)), 2 ** (bitwidth - 1) - 1
    return 0, 2**bitwidth - 1 - int(bool(narrow))


def check_bitwidth(bitwidth: np.ndarray | float) -> int:
    """The bit width as an int; a BnncError unless it is a positive integer scalar."""
    b = np.asarray(bitwidth)
    if b.size != 1 or not np.isfinite(b).all() or float(b.reshape(())) != int(b.reshape(())) or int(b.reshape(())) < 1:
        raise BnncError(f"bit width must be a positive integer scalar, got {b.tolist()}")
    return int(b.reshape(()))


def rounding(mode: str):
    """The numpy function of a QONNX rounding mode (case-insensitive)."""
    m = mode.upper()
    if m in ("ROUND", "HALF_EVEN"):
        return np.round  # numpy rounds half to even, as ONNX Round does
    if m == "CEIL":
        return np.ceil
    if m == "FLOOR":
        return np.floor
    if m in ("DOWN", "ROUND_TO_ZERO"):
        return np.trunc
    if m == "UP":
        return lambda y: np.sign(y) * np.ceil(np.abs(y))
    # qonnx's formulas, kept as they are (|y| + 0.5 can round up in float32 just below a tie)
    if m == "HALF_UP":
        return lambda y: np.sign(y) * np.floor(np.abs(y) + y.dtype.type(0.5))
    if m == "HALF_DOWN":
        return lambda y: np.sign(y) * np.ceil(np.abs(y) - y.dtype.type(0.5))
    raise BnncError(f"unknown rounding mode '{mode}' (known: {', '.join(ROUNDING_MODES)})")


def _like(v, x: np.ndarray) -> np.ndarray:
    return np.asarray(v).astype(x.dtype, copy=False)


def quant(x, scale, zeropt, bitwidth, signed: int = 1, narrow: int = 0, rounding_mode: str = "ROUND") -> np.ndarray:
    """QONNX ``Quant``; see the module docstring."""
    x = np.asarray(x)
    scale, zeropt = _like(scale, x), _like(zeropt, x)
    bits = check_bitwidth(bitwidth)
    y = x / scale + zeropt
    if bits == 1 and signed:
        q = np.where(y >= 0, np.ones((), x.dtype), -np.ones((), x.dtype))
    else:
        lo, hi = int_range(bool(signed), bool(narrow), bits)
        q = rounding(rounding_mode)(np.clip(y, x.dtype.type(lo), x.dtype.type(hi)))
    return ((q - zeropt) * scale).astype(x.dtype, copy=False)


def bipolar_quant(x, scale) -> np.ndarray:
    """QONNX ``BipolarQuant``: +scale where x >= 0 (0 included), -scale elsewhere."""
    x = np.asarray(x)
    scale = _like(scale, x)
    return np.where(x >= 0, scale, -scale).astype(x.dtype, copy=False)


def channel_axis(ndim: int, data_layout: str = "") -> int:
    """The axis MultiThreshold reads channels from: where "C" stands in ``data_layout``, or, without
    a layout, 1 for NC and NCHW inputs and 2 for NWC (rank 3) inputs (qonnx's convention)."""
    if data_layout:
        return data_layout.upper().index("C") if "C" in data_layout.upper() else 1
    return 2 if ndim == 3 else 1


def multithreshold(x, thresholds, out_scale: float = 1.0, out_bias: float = 0.0, data_layout: str = "") -> np.ndarray:
    """QONNX ``MultiThreshold``: out_bias + out_scale * (number of thresholds x reaches)."""
    x = np.asarray(x)
    thr = np.asarray(thresholds).astype(x.dtype, copy=False)
    axis = channel_axis(x.ndim, data_layout)
    if thr.ndim != 2 or thr.shape[0] not in (1, x.shape[axis]):
        raise BnncError(f"MultiThreshold thresholds have shape {thr.shape}; expected [{x.shape[axis]} or 1, T]")
    shape = [1] * x.ndim + [thr.shape[1]]
    shape[axis] = thr.shape[0]
    count = np.count_nonzero(x[..., None] >= thr.reshape(shape), axis=-1).astype(x.dtype)
    return (x.dtype.type(out_scale) * count + x.dtype.type(out_bias)).astype(x.dtype, copy=False)


def trunc_shift(scale, out_scale) -> np.ndarray:
    """Trunc v2's power-of-two step between the input and output scales."""
    return np.asarray(2.0 ** np.round(np.log2(np.asarray(out_scale, np.float64) / np.asarray(scale, np.float64))))


def trunc(x, scale, zeropt, in_bits, out_bits, rounding_mode: str = "FLOOR", signed: int = 1, narrow: int = 0,
          out_scale=None) -> np.ndarray:
    """QONNX ``Trunc`` (v1 when ``out_scale`` is None, else v2); see the module docstring."""
    x = np.asarray(x)
    scale, zeropt = _like(scale, x), _like(zeropt, x)
    y = np.round(x / scale + zeropt)
    rnd = rounding(rounding_mode)
    if out_scale is None:
        step = _like(2.0 ** (check_bitwidth(in_bits) - check_bitwidth(out_bits)), x)
        return ((rnd(y / step) - zeropt) * scale).astype(x.dtype, copy=False)
    step = _like(trunc_shift(scale, out_scale), x)
    lo, hi = int_range(bool(signed), bool(narrow), check_bitwidth(out_bits))
    y = rnd(np.clip(y / step, x.dtype.type(lo), x.dtype.type(hi)))
    return ((y - zeropt / step) * _like(out_scale, x)).astype(x.dtype, copy=False)


def evaluate(node: onnx.NodeProto, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run one QONNX node on numpy inputs with the references above."""
    a = _attrs(node)
    op = node.op_type
    if op in ("Quant", "IntQuant"):
        return [quant(*inputs[:4], a.get("signed", 1), a.get("narrow", 0), a.get("rounding_mode", "ROUND"))]
    if op == "BipolarQuant":
        return [bipolar_quant(inputs[0], inputs[1])]
    if op == "MultiThreshold":
        return [multithreshold(inputs[0], inputs[1], a.get("out_scale", 1.0), a.get("out_bias", 0.0),
                               a.get("data_layout", ""))]
    if op == "Trunc":
        mode, signed, narrow = a.get("rounding_mode", "FLOOR"), a.get("signed", 1), a.get("narrow", 0)
        if len(inputs) == 5:
            return [trunc(*inputs[:5], mode)]
        return [trunc(*inputs[:4], inputs[-1], mode, signed, narrow, out_scale=inputs[4])]
    raise BnncError(f"node '{node.name}': QONNX op {op} has no reference implementation")


def run_onnx_nodes(
    nodes: Sequence[onnx.NodeProto],
    values: dict[str, np.ndarray],
    outputs: Sequence[str],
    opsets: dict[str, int],
) -> list[np.ndarray]:
    """Evaluate standard-domain ``nodes`` with onnxruntime, feeding the values they read from
    ``values``; return ``outputs``. Graph optimizations are off, so every node runs with the
    same kernel onnxruntime uses for it in the original model."""
    produced = {o for n in nodes for o in n.output}
    reads = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced))
    ins = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(values[i].dtype), values[i].shape)
           for i in reads]
    graph = helper.make_graph(list(nodes), "eval", ins, [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = min(model.ir_version, 10)
    # failures come back as exceptions; onnxruntime's log is noise here
    sess = session(model, what="constant nodes " + ", ".join(repr(n.name) for n in nodes), log_level=4)
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    try:
        return sess.run(list(outputs), {i: values[i] for i in reads}, ro)
    except Exception as e:  # onnxruntime's own exception types are not public API
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BnncError(f"onnxruntime failed on nodes {', '.join(repr(n.name) for n in nodes)}: {first}") from e


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Execute ``model`` node by node: QONNX ops with the references, the others with onnxruntime.

    Slow and obvious on purpose: it is the oracle the lowering is tested against.
    """
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update(feeds)
    opsets = {o.domain: o.version for o in model.opset_import if o.domain not in QONNX_DOMAINS}
    for node in model.graph.node:
        if is_qonnx(node):
            outs = evaluate(node, [values[i] for i in node.input])
        else:
            outs = run_onnx_nodes([node], values, [o for o in node.output if o], opsets)
        values.update(zip([o for o in node.output if o], outs, strict=True))
    return [values[o.name] for o in model.graph.output]
