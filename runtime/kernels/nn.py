"""Shared float-kernel machinery (activation codes and their Numba loops, window geometry, the
serial twins of parallel kernels) and the dense float kernels: Gemm, MatMul (plain and
bnnc.Fused*) and BatchNormalization. Conv is in conv.py, the pools in pool.py.

Activations are coded as small ints (``ACTIVATIONS``) with two float parameters so that one
compiled kernel serves every fused layer; the code is applied in place, as onnxruntime's
com.microsoft FusedConv does.

Small work runs serially: every parallel kernel is a ``Twin`` (runtime/kernels/base.py), called
with its amount of work (elements, or multiply-adds), which runs serially below
``PARALLEL_WORK`` or with one thread.

Numba inner loops here index 0-based slices (``dst = o[lo:hi]; dst[i]``): with an index that may
be negative Numba emits a wraparound check that stops LLVM from vectorizing the loop.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import Kernel, Step, Twin, register
from runtime.threads import current_threads, run_parts

# activation name -> (code, default parameters); the parameters are a0, a1 of act_rows
ACTIVATIONS = {
    "": (0, ()),
    "Relu": (1, ()),
    "LeakyRelu": (2, (0.01,)),
    "Clip": (3, (-math.inf, math.inf)),
    "Sigmoid": (4, ()),
    "Tanh": (5, ()),
    "HardSigmoid": (6, (0.2, 0.5)),
}
_CHUNK = 16384  # elements per task of the flat elementwise kernels
_SPLIT_MACS = 1 << 22  # a matmul with more multiply-adds than this is split over threads


# -- shared Numba helpers ------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def act_rows(x, y, kind, a0, a1):
    """y[i] = act(x[i]) over 1-D arrays (x may be y); one simple loop per kind so each vectorizes."""
    n = x.shape[0]
    if kind == 0:
        for i in range(n):
            y[i] = x[i]
    elif kind == 1:
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else 0
    elif kind == 2:
        for i in range(n):
            v = x[i]
            y[i] = v if v >= 0 else v * a0
    elif kind == 3:
        for i in range(n):
            v = x[i]
            if v < a0:
                v = a0
            if v > a1:
                v = a1
            y[i] = v
    elif kind == 4:
        for i in range(n):
            v = x[i]
            if v >= 0:
                y[i] = 1.0 / (1.0 + math.exp(-v))
            else:
                e = math.exp(v)
                y[i] = e / (1.0 + e)
    elif kind == 5:
        for i in range(n):
            y[i] = math.tanh(x[i])
    elif kind == 6:
        for i in range(n):
            v = a0 * x[i] + a1
            y[i] = min(1.0, max(0.0, v))


@Twin
def _act_flat(x, y, kind, a0, a1):
    n = x.shape[0]
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(n, lo + _CHUNK)
        act_rows(x[lo:hi], y[lo:hi], kind, a0, a1)


def _channel_affine_act_body(x, y, scale, bias, kind, a0, a1):
    """y[n, c, :] = act(x[n, c, :] * scale[c] + bias[c]) for (N, C, S) arrays (x may be y)."""
    N, C, S = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        xr = x[n, c]
        yr = y[n, c]
        sc = scale[c]
        b = bias[c]
        for s in range(S):
            yr[s] = xr[s] * sc + b
        if kind != 0:
            act_rows(yr, yr, kind, a0, a1)


_channel_affine_act = Twin(_channel_affine_act_body)


# -- validated wrappers --------------------------------------------------------------------------
def activate(x: np.ndarray, y: np.ndarray, kind: int, a0: float = 0.0, a1: float = 0.0) -> None:
    """y = act(x) elementwise for contiguous arrays of one shape (x may be y)."""
    assert x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous
    if kind != 0 or x is not y:
        _act_flat(x.size, x.reshape(-1), y.reshape(-1), kind, float(a0), float(a1))


def emit_activate(e, x: str, y: str, size: int, kind: int, a0=0.0, a1=0.0) -> None:
    """``activate`` in generated code (runtime/codegen.py)."""
    if kind != 0 or x != y:
        e.call(_act_flat, Expr(f"{x}.reshape(-1)"), Expr(f"{y}.reshape(-1)"), kind, a0 if isinstance(a0, Expr) else float(a0),
               a1 if isinstance(a1, Expr) else float(a1), work=size)


def channel_affine(x: np.ndarray, y: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                   kind: int = 0, a0: float = 0.0, a1: float = 0.0) -> None:
    """y = act(x * scale[c] + bias[c]) with channels on axis 1 of contiguous x and y."""
    assert x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous
    n, c = (x.shape[0], x.shape[1]) if x.ndim >= 2 else (1, x.shape[0])
    _channel_affine_act(x.size, x.reshape(n, c, -1), y.reshape(n, c, -1), scale, bias, kind, float(a0), float(a1))


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b (numpy semantics). A 2-D product larger than _SPLIT_MACS is split into bands
    of rows (or of columns, for few rows) over the session's threads: during an inference BLAS
    itself runs single-threaded (see runtime.threads)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] * a.shape[1] * b.shape[1] < _SPLIT_MACS:
        np.matmul(a, b, out=out)
        return
    threads = current_threads()
    if threads == 1:
        np.matmul(a, b, out=out)
        return
    by_rows = a.shape[0] >= b.shape[1]
    n = a.shape[0] if by_rows else b.shape[1]
    step = -(-n // threads)

    def part(p: int, worker: int) -> None:
        lo, hi = p * step, min(n, (p + 1) * step)
        if by_rows:
            np.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    run_parts(part, -(-n // step), threads)


def activation_of(step: Step, name: str | None = None, params: list | None = None) -> tuple[int, float, float]:
    """The (code, a0, a1) of an activation, by default from a fused node's attributes."""
    if name is None:
        name = step.attr("activation", "")
        params = step.attr("activation_params", None)
    if name not in ACTIVATIONS:
        raise step.error(f"unsupported fused activation '{name}' (supported: {', '.join(a for a in ACTIVATIONS if a)})")
    code, defaults = ACTIVATIONS[name]
    p = list(defaults) if not params else [float(v) for v in params]
    if len(p) != len(defaults):
        raise step.error(f"activation {name} takes {len(defaults)} parameters, got {len(p)}")
    p += [0.0, 0.0]
    return code, float(p[0]), float(p[1])


def window_geometry(step: Step, in_sp, k_sp, out_sp):
    """Kernel, strides, dilations and (top, left, bottom, right) pads of a 1-D or 2-D window op,
    with auto_pad resolved and 1-D problems lifted to 2-D (H = 1)."""
    r = len(in_sp)
    if r not in (1, 2) or len(k_sp) != r:
        raise step.error(f"only 1-D and 2-D windows are supported (this one is {r}-D)")
    strides = list(step.attr("strides") or [1] * r)
    dil = list(step.attr("dilations") or [1] * r)
    auto = step.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = list(step.attr("pads") or [0] * (2 * r))
    elif auto == "VALID":
        pads = [0] * (2 * r)
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * r)
        for i in range(r):
            total = max(0, (out_sp[i] - 1) * strides[i] + (k_sp[i] - 1) * dil[i] + 1 - in_sp[i])
            small = total // 2
            pads[i] = small if auto == "SAME_UPPER" else total - small
            pads[i + r] = total - pads[i]
    else:
        raise step.error(f"unknown auto_pad '{auto}'")
    if len(strides) != r or len(dil) != r or len(pads) != 2 * r:
        raise step.error("strides, dilations or pads do not match the number of spatial axes")
    if min(strides) < 1 or min(dil) < 1 or min(pads) < 0:
        raise step.error("strides and dilations must be positive and pads non-negative")
    if r == 1:
        return (1, k_sp[0]), (1, strides[0]), (1, dil[0]), (0, pads[0], 0, pads[1])
    return tuple(k_sp), tuple(strides), tuple(dil), (pads[0], pads[1], pads[2], pads[3])


def lift4(shape):
    """(N, C, L) -> (N, C, 1, L); (N, C, H, W) unchanged."""
    return tuple(shape) if len(shape) == 4 else (shape[0], shape[1], 1, shape[2])


def same_shape(step: Step) -> None:
    """The Numba kernels index without bounds checks: an artifact whose plan gives an output
    shape that does not match the input is refused here, not read out of bounds later."""
    if tuple(step.in_shapes[0] or ()) != tuple(step.out_shapes[0]):
        raise step.error(f"output shape {list(step.out_shapes[0])} differs from input shape {list(step.in_shapes[0])}")


# -- kernels -------------------------------------------------------------------------------------
@register("Gemm", "bnnc.FusedGemm")
class Gemm(Kernel):
    """Y = act(alpha * A' @ B' + beta * C); a constant B is transposed and scaled once."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.act = activation_of(step) if step.op == "bnnc.FusedGemm" else (0, 0.0, 0.0)
        self.alpha = float(step.attr("alpha", 1.0))
        self.beta = float(step.attr("beta", 1.0))
        self.trans_a = bool(step.attr("transA", 0))
        self.trans_b = bool(step.attr("transB", 0))
        self.dtype = np.dtype(step.out_dtypes[0])
        self.b = self._b(step.consts[1], True) if step.consts[1] is not None else None
        self.has_c = len(step.in_shapes) > 2 and step.in_shapes[2] is not None and self.beta != 0.0
        self.c = None
        if self.has_c and step.consts[2] is not None:
            self.c = self._c(step.consts[2])

    def _b(self, b: np.ndarray, fold_alpha: bool) -> np.ndarray:
        b = b.T if self.trans_b else b
        if fold_alpha and self.alpha != 1.0:
            b = b * self.dtype.type(self.alpha)
        return np.ascontiguousarray(b, dtype=self.dtype)

    def _c(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=self.dtype) * self.dtype.type(self.beta)
        try:
            return np.ascontiguousarray(np.broadcast_to(c, self.step.out_shapes[0]))
        except ValueError:
            raise self.step.error(f"C of shape {c.shape} does not broadcast to {self.step.out_shapes[0]}") from None

    def run(self, ins, outs, scratch):
        a = ins[0].T if self.trans_a else ins[0]
        y = outs[0]
        if self.b is not None:
            matmul(a, self.b, out=y)
        else:
            matmul(a, self._b(ins[1], False), out=y)
            if self.alpha != 1.0:
                y *= self.dtype.type(self.alpha)
        if self.has_c:
            np.add(y, self.c if self.c is not None else self._c(ins[2]), out=y)
        if self.act[0] != 0:
            activate(y, y, *self.act)


@register("MatMul", "bnnc.FusedMatMul")
class MatMul(Kernel):
    """numpy-semantics matmul (batched, broadcast, 1-D operands); a constant 2-D B with a
    contiguous A is one GEMM over all leading rows."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.act = activation_of(step) if step.op == "bnnc.FusedMatMul" else (0, 0.0, 0.0)
        b = step.consts[1]
        self.b = np.ascontiguousarray(b) if b is not None else None
        a_shape = step.in_shapes[0]
        self.flat = b is not None and b.ndim == 2 and a_shape is not None and len(a_shape) > 2

    def run(self, ins, outs, scratch):
        a, y = ins[0], outs[0]
        b = self.b if self.b is not None else ins[1]
        if self.flat:
            matmul(a.reshape(-1, a.shape[-1]), b, out=y.reshape(-1, y.shape[-1]))
        else:
            matmul(a, b, out=y)
        if self.act[0] != 0:
            activate(y, y, *self.act)


@register("BatchNormalization")
class BatchNormalization(Kernel):
    """Inference BatchNorm folded into y = x * a[c] + b[c], a = scale / sqrt(var + eps),
    b = B - mean * a (computed in float64 once when the statistics are constants)."""

    def __init__(self, step: Step):
        super().__init__(step)
        if step.attr("training_mode", 0) or len(step.out_shapes) > 1:
            raise step.error("training-mode BatchNormalization is not supported (export the model in eval mode)")
        self.eps = float(step.attr("epsilon", 1e-5))
        self.dtype = np.dtype(step.out_dtypes[0])
        same_shape(step)
        c = step.in_shapes[0][1] if len(step.in_shapes[0]) > 1 else step.in_shapes[0][0]
        if len(step.in_shapes) != 5 or any(math.prod(s or ()) != c for s in step.in_shapes[1:5]):
            raise step.error(f"scale, B, mean and var must have {c} elements each")
        self.ab = self._fold(step.consts[1:5]) if all(c is not None for c in step.consts[1:5]) else None

    def _fold(self, p):
        scale, b, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in p)
        a = scale / np.sqrt(var + self.eps)
        return a.astype(self.dtype), (b - mean * a).astype(self.dtype)

    def run(self, ins, outs, scratch):
        a, b = self.ab if self.ab is not None else self._fold(ins[1:5])
        channel_affine(ins[0], outs[0], a, b)
