"""Elementwise activations beyond the fusable set of nn.py (Elu, Selu, Celu, HardSwish,
ThresholdedRelu, Softsign, Mish, Gelu, Shrink) and the float predicates IsNaN and IsInf.

Each activation is a scalar function evaluated in float64 (one rounding to the output type at
the end) and applied by one flat Numba loop, chosen by a small int code. Every formula needs at
most one libm call (``exp``, or ``erfc`` for Gelu), which is most of the cost: Mish and the tanh
Gelu are rewritten around one ``exp``, and ``exp(x) - 1`` stands for ``expm1`` (in float64 it is
off by ~1e-16 absolute, below a float32 ulp of the result unless the result is below ~1e-9).

NaN and inf come out as onnxruntime gives them: a comparison with NaN is false, so
ThresholdedRelu and Shrink map NaN to 0 and the others propagate it; ``-inf * 0`` is NaN
(HardSwish, Mish, Gelu of -inf), and so is ``inf / inf`` (Softsign of +-inf).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, Kernel, Step, Twin, check_dtypes, register
from runtime.kernels.nn import same_shape

_CHUNK = 16384  # elements per task of the flat loop
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, nogil=True)
def _elu(v, alpha):
    """x if x >= 0 else alpha * (exp(x) - 1)."""
    return v if v >= 0 else alpha * (math.exp(v) - 1.0)


@njit(cache=True, nogil=True)
def _selu(v, alpha, gamma):
    """gamma * x if x > 0 else gamma * alpha * (exp(x) - 1)."""
    return gamma * v if v > 0 else gamma * (alpha * (math.exp(v) - 1.0))


@njit(cache=True, nogil=True)
def _celu(v, alpha):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1)), i.e. x if x >= 0 else the second term."""
    return v if v >= 0 else alpha * (math.exp(v / alpha) - 1.0)


@njit(cache=True, nogil=True)
def _hard_swish(v):
    """x * max(0, min(1, x / 6 + 1 / 2)) (HardSigmoid with alpha = 1/6, beta = 1/2)."""
    return v * max(0.0, min(1.0, v * (1.0 / 6.0) + 0.5))


@njit(cache=True, nogil=True)
def _mish(v):
    """x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2), since
    tanh(log(1 + e^x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1); for x > 20 the factor is 1 to
    float64 precision (and n would overflow soon after)."""
    if v > 20.0:
        return v
    e = math.exp(v)
    n = e * (e + 2.0)
    return v * n / (n + 2.0)


@njit(cache=True, nogil=True)
def _gelu(v):
    """x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2))), written with erfc so that the left tail keeps
    its digits."""
    return 0.5 * v * math.erfc(-v * _SQRT_HALF)


@njit(cache=True, nogil=True)
def _gelu_tanh(v):
    """x / 2 * (1 + tanh(z)) with z = sqrt(2 / pi) * (x + 0.044715 * x^3), computed as
    x / (1 + exp(-2 z)) (1 + tanh(z) = 2 / (1 + exp(-2 z)))."""
    z = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
    return v / (1.0 + math.exp(-2.0 * z))


@njit(cache=True, nogil=True)
def _shrink(v, bias, lambd):
    """x + bias if x < -lambd, x - bias if x > lambd, else 0."""
    if v < -lambd:
        return v + bias
    if v > lambd:
        return v - bias
    return 0.0


# op -> kind code of _map_rows (Gelu with approximate="tanh" is 8)
_KINDS = {"Elu": 0, "Selu": 1, "Celu": 2, "HardSwish": 3, "ThresholdedRelu": 4, "Softsign": 5, "Mish": 6,
          "Gelu": 7, "Shrink": 9}
# op -> its float attributes, in the order they become the parameters a, b, with ONNX defaults
_PARAMS = {
    "Elu": (("alpha", 1.0),),
    "Selu": (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875)),
    "Celu": (("alpha", 1.0),),
    "ThresholdedRelu": (("alpha", 1.0),),
    "Shrink": (("bias", 0.0), ("lambd", 0.5)),
}


@njit(cache=True, nogil=True)
def _map_rows(x, y, kind, a, b):
    """y[i] = f_kind(x[i]) over 1-D arrays, evaluated in float64; one loop per kind."""
    n = x.shape[0]
    if kind == 0:
        for i in range(n):
            y[i] = _elu(float(x[i]), a)
    elif kind == 1:
        for i in range(n):
            y[i] = _selu(float(x[i]), a, b)
    elif kind == 2:
        for i in range(n):
            y[i] = _celu(float(x[i]), a)
    elif kind == 3:
        for i in range(n):
            y[i] = _hard_swish(float(x[i]))
    elif kind == 4:
        for i in range(n):
            v = x[i]
            y[i] = v if v > a else 0.0  # x if x > alpha else 0
    elif kind == 5:
        for i in range(n):
            v = float(x[i])
            y[i] = v / (1.0 + abs(v))  # x / (1 + |x|)
    elif kind == 6:
        for i in range(n):
            y[i] = _mish(float(x[i]))
    elif kind == 7:
        for i in range(n):
            y[i] = _gelu(float(x[i]))
    elif kind == 8:
        for i in range(n):
            y[i] = _gelu_tanh(float(x[i]))
    elif kind == 9:
        for i in range(n):
            y[i] = _shrink(float(x[i]), a, b)


def _map_body(x, y, kind, a, b):
    """_map_rows over flat arrays in chunks of _CHUNK elements, one task per chunk."""
    n = x.shape[0]
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(n, lo + _CHUNK)
        _map_rows(x[lo:hi], y[lo:hi], kind, a, b)


_map = Twin(_map_body)


@register(*_KINDS)
class Activation(Kernel):
    """One of the activations above, attributes (with ONNX defaults) read once."""

    def __init__(self, step: Step):
        super().__init__(step)
        same_shape(step)
        check_dtypes(step, [0], FLOATS)
        self.kind = _KINDS[step.op]
        if step.op == "Gelu":
            approximate = step.attr("approximate", "none")
            if approximate not in ("none", "tanh"):
                raise step.error(f"approximate must be 'none' or 'tanh', got '{approximate}'")
            self.kind += approximate == "tanh"
        params = [float(step.attr(k, default)) for k, default in _PARAMS.get(step.op, ())]
        if step.op == "Celu" and params[0] == 0.0:
            raise step.error("alpha must be nonzero (Celu divides by it)")
        self.a, self.b = (params + [0.0, 0.0])[:2]

    def emit(self, e, ins, outs):
        e.call(_map, Expr(f"{ins[0]}.reshape(-1)"), Expr(f"{outs[0]}.reshape(-1)"), self.kind, self.a, self.b,
               work=math.prod(self.step.out_shapes[0]))

    def run(self, ins, outs, scratch):
        x, y = ins[0], outs[0]
        _map(x.size, x.reshape(-1), y.reshape(-1), self.kind, self.a, self.b)


@register("IsNaN", "IsInf")
class FloatClass(Kernel):
    """IsNaN: x != x. IsInf: x == +inf (if detect_positive) or x == -inf (if detect_negative)."""

    def __init__(self, step: Step):
        super().__init__(step)
        same_shape(step)
        check_dtypes(step, [0], FLOATS, output=False)
        if step.out_dtypes[0] != "bool":
            raise step.error(f"the output must be bool, the plan says {step.out_dtypes[0]}")
        self.pos = bool(step.attr("detect_positive", 1))
        self.neg = bool(step.attr("detect_negative", 1))

    def emit(self, e, ins, outs):
        if self.step.op == "IsNaN":
            expr = "{0} != {0}"
        elif self.pos or self.neg:
            expr = " or ".join(["{0} == math.inf"] * self.pos + ["{0} == -math.inf"] * self.neg)
        else:
            expr = "False"
        e.elementwise(outs[0], self.step.out_shapes[0], [(ins[0], tuple(self.step.in_shapes[0]))], expr.format)

    def run(self, ins, outs, scratch):
        x, y = ins[0], outs[0]
        if self.step.op == "IsNaN":
            np.isnan(x, out=y)
        elif self.pos and self.neg:
            np.isinf(x, out=y)
        elif self.pos:
            np.isposinf(x, out=y)
        elif self.neg:
            np.isneginf(x, out=y)
        else:
            y.fill(False)
