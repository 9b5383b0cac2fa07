"""Shared float-kernel machinery (activation codes and their Numba loops, window geometry, the
serial twins of parallel kernels) and BatchNormalization. Conv is in conv.py, Gemm and MatMul in
dense.py, the pools in pool.py.

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
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, Kernel, Step, Twin, check_dtypes, register

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


# -- shared Numba helpers ------------------------------------------------------------------------
def tanh(v):
    """tanh; for float32 in compiled code, onnxruntime's rational approximation (MLAS: odd
    degree-13 over even degree-6 polynomial on [-9, 9], within 4e-7 of tanh) in fused
    multiply-adds as MLAS computes it (bit-equal to onnxruntime's Tanh on AVX2; mul and add apart
    took twice as long and differed in the last bit on a third of the values), which LLVM
    vectorizes, where the libm call runs one element at a time (17x slower)."""
    return math.tanh(v)


def sigmoid(v):
    """1 / (1 + exp(-v)); for float32 in compiled code, onnxruntime's rational approximation
    (MLAS: degree 9 over degree 10 on [-18, 18], within 3e-7), in fused multiply-adds and
    vectorized like ``tanh`` (within one unit of the last place of onnxruntime's Sigmoid)."""
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c rounded once (``llvm.fma``): the fused multiply-add onnxruntime's vector kernels
    use; LLVM vectorizes it to the CPU's FMA (vfmadd, NEON fmla)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fma, args)

    return sig, codegen


def _tanh32(v):
    v = min(max(v, np.float32(-9.0)), np.float32(9.0))
    s = v * v
    p = fma32(s, np.float32(-2.76076847742355e-16), np.float32(2.00018790482477e-13))
    p = fma32(p, s, np.float32(-8.60467152213735e-11))
    p = fma32(p, s, np.float32(5.12229709037114e-08))
    p = fma32(p, s, np.float32(1.48572235717979e-05))
    p = fma32(p, s, np.float32(6.37261928875436e-04))
    p = fma32(p, s, np.float32(4.89352455891786e-03)) * v
    q = fma32(s, np.float32(1.19825839466702e-06), np.float32(1.18534705686654e-04))
    q = fma32(q, s, np.float32(2.26843463243900e-03))
    q = fma32(q, s, np.float32(4.89352518554385e-03))
    return p / q


def _sigmoid32(v):
    v = min(max(v, np.float32(-18.0)), np.float32(18.0))
    s = v * v
    p = fma32(s, np.float32(4.37031012579801e-11), np.float32(1.15627324459942e-07))
    p = fma32(p, s, np.float32(6.08574864600143e-05))
    p = fma32(p, s, np.float32(8.51377133304701e-03))
    p = fma32(p, s, np.float32(2.48287947061529e-01)) * v
    q = fma32(s, np.float32(6.10247389755681e-13), np.float32(5.76102136993427e-09))
    q = fma32(q, s, np.float32(6.29106785017040e-06))
    q = fma32(q, s, np.float32(1.70198817374094e-03))
    q = fma32(q, s, np.float32(1.16817656904453e-01))
    q = fma32(q, s, np.float32(9.93151921023180e-01))
    return p / q + np.float32(0.5)


@overload(tanh, inline="always")
def _tanh_typed(v):
    return _tanh32 if v == types.float32 else (lambda v: math.tanh(v))


@overload(sigmoid, inline="always")
def _sigmoid_typed(v):
    if v == types.float32:
        return _sigmoid32
    return lambda v: 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


@njit(cache=True, nogil=True, error_model="numpy")
def act_inplace(y, kind, a0, a1):
    """y[i] = act(y[i]): ``act_rows`` written over one array, since with two names for one buffer
    LLVM's overlap check fails and its loops run one element at a time.

    Relu and LeakyRelu store a value computed on both branches (``v + 0`` where v > 0, ``v * 1``
    where v >= 0, exact there): written as ``v if v > 0 else 0``, the store of v back where it
    was read is dropped and the loop becomes masked stores of the zeros, which AMD's AVX2 runs
    several times slower than plain ones (Relu over 36 K floats: 20 us -> 3 us)."""
    n = y.shape[0]
    if kind == 1:
        for i in range(n):
            v = y[i]
            y[i] = v + np.float32(0.0) if v > 0 else np.float32(0.0)
    elif kind == 2:
        for i in range(n):
            v = y[i]
            y[i] = v * (np.float32(1.0) if v >= 0 else a0)
    elif kind == 3:
        for i in range(n):
            v = y[i]
            if v < a0:
                v = a0
            if v > a1:
                v = a1
            y[i] = v
    elif kind == 4:
        for i in range(n):
            y[i] = sigmoid(y[i])
    elif kind == 5:
        for i in range(n):
            y[i] = tanh(y[i])
    elif kind == 6:
        for i in range(n):
            v = a0 * y[i] + a1
            y[i] = min(1.0, max(0.0, v))


@njit(cache=True, nogil=True, error_model="numpy")
def act_rows(x, y, kind, a0, a1):
    """y[i] = act(x[i]) over 1-D arrays (x may be y); one simple loop per kind so each vectorizes
    (numpy's error model: a division has no zero check, which would stop that)."""
    n = x.shape[0]
    if x.ctypes.data == y.ctypes.data:
        act_inplace(y, kind, a0, a1)
        return
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
            y[i] = sigmoid(x[i])
    elif kind == 5:
        for i in range(n):
            y[i] = tanh(x[i])
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
@register("BatchNormalization")
class BatchNormalization(Kernel):
    """Inference BatchNorm folded into y = x * a[c] + b[c], a = scale / sqrt(var + eps),
    b = B - mean * a (computed in float64 once when the statistics are constants)."""

    n_inputs = (5, 5)
    n_outputs = (1, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        if step.attr("training_mode", 0) or len(step.out_shapes) > 1:
            raise step.error("training-mode BatchNormalization is not supported (export the model in eval mode)")
        check_dtypes(step, [0], FLOATS)
        for i in range(1, 5):
            check_dtypes(step, [i], FLOATS, output=False)
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

    def _ncs(self) -> tuple[int, int, int]:
        xs = self.step.in_shapes[0]
        return (xs[0], xs[1], math.prod(xs[2:])) if len(xs) > 1 else (1, xs[0], 1)

    def emit(self, e, ins, outs):
        ab = self.ab
        if ab is None:  # statistics computed in the graph: folded at run time, in float64 as here
            c = self._ncs()[1]
            ab = (e.work((c,), self.dtype, "bn_a"), e.work((c,), self.dtype, "bn_b"))
            e.call(_fold_bn, *(Expr(f"{v}.reshape(-1)") for v in ins[1:5]), self.eps, *ab)
        ncs = e.lit(self._ncs())
        e.call(_channel_affine_act, Expr(f"{ins[0]}.reshape({ncs})"), Expr(f"{outs[0]}.reshape({ncs})"), *ab, 0, 0.0,
               0.0, work=math.prod(self._ncs()))

    def run(self, ins, outs, scratch):
        a, b = self.ab if self.ab is not None else self._fold(ins[1:5])
        channel_affine(ins[0], outs[0], a, b)


@njit(cache=True, nogil=True)
def _fold_bn(scale, bias, mean, var, eps, a, b):
    """a = scale / sqrt(var + eps), b = bias - mean * a, in float64 (BatchNormalization._fold)."""
    for i in range(a.shape[0]):
        f = np.float64(scale[i]) / math.sqrt(np.float64(var[i]) + eps)
        a[i] = f
        b[i] = np.float64(bias[i]) - np.float64(mean[i]) * f
