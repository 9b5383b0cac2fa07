"""Normalizations over the sample's own statistics: InstanceNormalization and LayerNormalization
(inference form: only the output Y).

Both normalize rows of a 2-D view: y = (x - mean) / sqrt(var + epsilon) * scale + bias, with mean
and the biased variance of the row. InstanceNormalization's rows are the (n, c) planes of an
(N, C, D1, ...) input, with one scale and bias per channel c; LayerNormalization's rows are the
blocks of the axes from ``axis`` on, with a scale and bias per position in the block.

The statistics are accumulated in float64 in two passes (mean, then squared deviations), and
``x - mean`` is formed in float64 too: onnxruntime accumulates in float32, so the two agree to
float32 rounding on ordinary data; on rows whose mean is large against their spread
onnxruntime is the less accurate of the two.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, Kernel, Step, Twin, check_dtypes, register
from runtime.kernels.nn import same_shape


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _moments(v, eps):
    """(mean, 1 / sqrt(var + eps)) of a 1-D array; var = mean((v - mean)^2), in float64. The sums
    may be reassociated (so they vectorize): in float64 the order costs nothing at float32."""
    n = v.shape[0]
    s = 0.0
    for i in range(n):
        s += v[i]
    m = s / n
    q = 0.0
    for i in range(n):
        d = v[i] - m
        q += d * d
    return m, 1.0 / math.sqrt(q / n + eps)


def _instance_norm_body(x, y, scale, bias, eps):
    """y[n, c, s] = (x[n, c, s] - mean) * inv_std * scale[c] + bias[c] over the plane x[n, c, :]
    of (N, C, S) arrays."""
    N, C, S = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        xr = x[n, c]
        yr = y[n, c]
        m, inv = _moments(xr, eps)
        a = inv * scale[c]
        b = bias[c]
        for s in range(S):
            yr[s] = (xr[s] - m) * a + b


def _layer_norm_body(x, y, scale, bias, eps):
    """y[r, s] = (x[r, s] - mean) * inv_std * scale[s] + bias[s] over the row x[r, :] of (R, S)
    arrays."""
    R, S = x.shape
    for r in prange(R):
        xr = x[r]
        yr = y[r]
        m, inv = _moments(xr, eps)
        for s in range(S):
            yr[s] = (xr[s] - m) * inv * scale[s] + bias[s]


_instance_norm = Twin(_instance_norm_body)
_layer_norm = Twin(_layer_norm_body)


def _float_only(step: Step) -> None:
    """The kernels are compiled for float32 and float64 only (scale and bias are read as float64)."""
    check_dtypes(step, [0], FLOATS)
    for i in (1, 2):
        check_dtypes(step, [i], FLOATS, output=False)


def _vector(step: Step, arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``arr`` broadcast to ``shape`` and flattened to a contiguous float64 vector."""
    try:
        full = np.broadcast_to(np.asarray(arr, dtype=np.float64), shape)
    except ValueError:
        raise step.error(f"{what} of shape {list(np.shape(arr))} does not broadcast to {list(shape)}") from None
    return np.ascontiguousarray(full).reshape(-1)


class _Normalization(Kernel):
    """Shared set-up: epsilon, and the scale and bias as float64 vectors over the normalized
    block (``param_shape``), made once when they are constants."""

    n_inputs = (2, 3)

    def _prepare(self, step: Step, param_shape: tuple[int, ...]) -> None:
        """Checks common to both ops; scale and bias made once when they are constants."""
        _float_only(step)
        same_shape(step)
        if len(step.in_shapes) < 2 or step.in_shapes[1] is None:
            raise step.error("the scale input is required")
        self.eps = float(step.attr("epsilon", 1e-5))
        self.param_shape = param_shape
        self.has_bias = len(step.in_shapes) > 2 and step.in_shapes[2] is not None
        scale, bias = step.consts[1], step.consts[2] if self.has_bias else None
        self.params = None
        if scale is not None and (bias is not None or not self.has_bias):
            self.params = self._vectors(scale, bias)

    def _vectors(self, scale: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scale, bias) as float64 vectors over the normalized block; no bias is a bias of 0."""
        scale = _vector(self.step, scale, self.param_shape, "scale")
        bias = _vector(self.step, bias, self.param_shape, "bias") if bias is not None else np.zeros_like(scale)
        return scale, bias

    def _emit_params(self, e, ins) -> tuple:
        """The (scale, bias) vectors in generated code: the constant ones, or this run's inputs
        broadcast into float64 workspace vectors."""
        if self.params is not None:
            return self.params
        out = []
        for i in (1, 2):
            w = e.work(self.param_shape, np.float64, "norm", zeroed=True)  # zeros stay when there is no bias
            if i == 1 or self.has_bias:
                shape = tuple(self.step.in_shapes[i])
                if np.broadcast_shapes(shape, self.param_shape) != self.param_shape:
                    raise self.step.error(f"{('scale', 'bias')[i - 1]} of shape {list(shape)} does not broadcast to "
                                          f"{list(self.param_shape)}")
                e.elementwise(w, self.param_shape, [(ins[i], shape)], lambda a: f"float64({a})")
            out.append(Expr(f"{w}.reshape(-1)"))
        return tuple(out)

    def _params(self, ins) -> tuple[np.ndarray, np.ndarray]:
        """The constant (scale, bias), or this run's."""
        if self.params is not None:
            return self.params
        return self._vectors(ins[1], ins[2] if self.has_bias else None)


@register("InstanceNormalization")
class InstanceNormalization(_Normalization):
    """y = (x - mean) / sqrt(var + epsilon) * scale[c] + B[c], statistics per (n, c) plane."""

    def __init__(self, step: Step):
        super().__init__(step)
        shape = tuple(step.in_shapes[0])
        if len(shape) < 3:
            raise step.error(f"the input must be (N, C, D1, ...), got shape {list(shape)}")
        if math.prod(shape[2:]) == 0:
            raise step.error("the spatial axes are empty: mean and variance are undefined")
        self._prepare(step, (shape[1],))
        self.shape3 = (shape[0], shape[1], math.prod(shape[2:]))

    def emit(self, e, ins, outs):
        scale, bias = self._emit_params(e, ins)
        s3 = e.lit(self.shape3)
        e.call(_instance_norm, Expr(f"{ins[0]}.reshape({s3})"), Expr(f"{outs[0]}.reshape({s3})"), scale, bias, self.eps,
               work=math.prod(self.shape3))

    def run(self, ins, outs, scratch):
        scale, bias = self._params(ins)
        x = ins[0].reshape(self.shape3)
        _instance_norm(x.size, x, outs[0].reshape(self.shape3), scale, bias, self.eps)


@register("LayerNormalization")
class LayerNormalization(_Normalization):
    """y = (x - mean) / sqrt(var + epsilon) * Scale + B, statistics over the axes from ``axis``
    (default -1) on; Scale and B broadcast to those axes."""

    n_outputs = (1, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        if len(step.out_shapes) > 1:
            raise step.error("only the output Y is supported; the Mean and InvStdDev outputs are not")
        shape = tuple(step.in_shapes[0])
        r = len(shape)
        axis = int(step.attr("axis", -1))
        if not -r <= axis < r:
            raise step.error(f"axis {axis} is out of range for rank {r}")
        axis %= r
        if math.prod(shape[axis:]) == 0:
            raise step.error("the normalized axes are empty: mean and variance are undefined")
        self._prepare(step, shape[axis:])
        self.shape2 = (math.prod(shape[:axis]), math.prod(shape[axis:]))

    def emit(self, e, ins, outs):
        scale, bias = self._emit_params(e, ins)
        s2 = e.lit(self.shape2)
        e.call(_layer_norm, Expr(f"{ins[0]}.reshape({s2})"), Expr(f"{outs[0]}.reshape({s2})"), scale, bias, self.eps,
               work=math.prod(self.shape2))

    def run(self, ins, outs, scratch):
        scale, bias = self._params(ins)
        x = ins[0].reshape(self.shape2)
        _layer_norm(x.size, x, outs[0].reshape(self.shape2), scale, bias, self.eps)
