"""Softmax / LogSoftmax and the standalone activations that layers also fuse: Relu, LeakyRelu,
Sigmoid, Tanh, HardSigmoid, Clip and PRelu.

The activations run the same Numba code as the fused layers' activations (``nn.activate``), so
a standalone Relu and one fused into a conv agree to the bit; in the plan function they are
emitted as that code (``nn.emit_activate``) or, for integer tensors, as one scalar expression
per element (``Emitter.elementwise``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, NUMBERS, Kernel, Step, Twin, broadcast, check_dtypes, register
from runtime.kernels.elementwise import operand
from runtime.kernels.nn import activate, activation_of, emit_activate, same_shape


def _channel_prelu_body(x, y, slope):
    """y = x where x >= 0 else slope[c] * x, for (N, C, S) arrays."""
    N, C, S = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        xr = x[n, c]
        yr = y[n, c]
        a = slope[c]
        for s in range(S):
            v = xr[s]
            yr[s] = v if v >= 0 else v * a


_channel_prelu = Twin(_channel_prelu_body)


def _softmax_body(x, y, log):
    """Softmax over axis 1 of (P, n, Q) arrays: y = exp(x - max) / sum (or its log)."""
    P, n, Q = x.shape
    for pq in prange(P * Q):
        p = pq // Q
        q = pq - p * Q
        m = x[p, 0, q]
        for i in range(1, n):
            m = max(m, x[p, i, q])
        s = 0.0
        if log:
            for i in range(n):
                s += math.exp(x[p, i, q] - m)
            ls = math.log(s)
            for i in range(n):
                y[p, i, q] = x[p, i, q] - m - ls
        else:
            for i in range(n):
                e = math.exp(x[p, i, q] - m)
                y[p, i, q] = e
                s += e
            r = 1.0 / s
            for i in range(n):
                y[p, i, q] = y[p, i, q] * r


_softmax = Twin(_softmax_body)


@register("Softmax", "LogSoftmax")
class Softmax(Kernel):
    """Softmax / LogSoftmax.

    ONNX 13 semantics (one axis, default -1) unless the step carries the hint attribute
    ``_opset`` < 13: then the input is coerced to 2-D at ``axis`` (default 1) and normalised
    over the flattened trailing block, as opsets 1-12 define.
    """

    def __init__(self, step: Step):
        super().__init__(step)
        shape = step.in_shapes[0]
        r = len(shape)
        legacy = int(step.attr("_opset", 13)) < 13
        axis = int(step.attr("axis", 1 if legacy else -1))
        check_dtypes(step, [0], FLOATS)
        same_shape(step)
        if not -r <= axis < max(r, 1):
            raise step.error(f"axis {axis} is out of range for rank {r}")
        axis %= max(r, 1)
        p = math.prod(shape[:axis])
        if legacy:
            self.shape3 = (p, math.prod(shape[axis:]), 1)
        else:
            self.shape3 = (p, shape[axis] if r else 1, math.prod(shape[axis + 1:]))
        self.log = step.op == "LogSoftmax"
        self.work = math.prod(shape)

    def emit(self, e, ins, outs):
        s3 = e.lit(self.shape3)
        e.call(_softmax, Expr(f"{ins[0]}.reshape({s3})"), Expr(f"{outs[0]}.reshape({s3})"), self.log, work=self.work)

    def run(self, ins, outs, scratch):
        _softmax(self.work, ins[0].reshape(self.shape3), outs[0].reshape(self.shape3), self.log)


class _Activation(Kernel):
    """A standalone activation: the fused-activation code applied out of place."""

    name = ""

    def __init__(self, step: Step):
        super().__init__(step)
        keys = {"LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta")}.get(self.name, ())
        params = [step.attr(k) for k in keys]
        self.act = activation_of(step, self.name, params if None not in params else None)
        self.float = step.out_dtypes[0] in FLOATS
        if not self.float and self.name != "Relu":
            raise step.error(f"{self.name} of {step.out_dtypes[0]} is not supported (float only)")
        check_dtypes(step, [0], NUMBERS)
        same_shape(step)

    def emit(self, e, ins, outs):
        if self.float:
            emit_activate(e, ins[0], outs[0], math.prod(self.step.out_shapes[0]), *self.act)
        else:
            e.elementwise(outs[0], self.step.out_shapes[0], [operand(self.step, ins, 0)],
                          lambda a: f"max({a}, {self.step.out_dtypes[0]}(0))")

    def run(self, ins, outs, scratch):
        if self.float:
            activate(ins[0], outs[0], *self.act)
        else:
            np.maximum(ins[0], 0, out=outs[0])


def _activation_kernel(name: str):
    cls = type(name, (_Activation,), {"name": name, "__doc__": f"Standalone {name}."})
    return register(name)(cls)


for _name in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"):
    _activation_kernel(_name)


@register("Clip")
class Clip(Kernel):
    """Clip with min/max as attributes (opset < 11) or optional scalar inputs (read per run
    unless constant)."""

    n_inputs = (1, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0, 1, 2], NUMBERS)
        same_shape(step)
        for i in (1, 2):
            if len(step.in_shapes) > i and step.in_shapes[i] is not None and math.prod(step.in_shapes[i]) != 1:
                raise step.error(f"{('min', 'max')[i - 1]} must be one value, got shape {list(step.in_shapes[i])}")
        dt = np.dtype(step.out_dtypes[0])
        info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
        lo_hi = [step.attr("min", -math.inf if dt.kind == "f" else info.min),
                 step.attr("max", math.inf if dt.kind == "f" else info.max)]
        self.runtime = [None, None]
        for k in (0, 1):
            if len(step.in_shapes) > k + 1 and step.in_shapes[k + 1] is not None:
                c = step.consts[k + 1]
                if c is None:
                    self.runtime[k] = k + 1
                else:
                    lo_hi[k] = c.reshape(-1)[0].item()
        self.lo, self.hi = lo_hi
        self.float = dt.kind == "f"

    def emit(self, e, ins, outs):
        t = self.step.out_dtypes[0]
        lo, hi = (f"{ins[i]}.reshape(-1)[0]" if i else e.lit(v) for i, v in zip(self.runtime, (self.lo, self.hi)))
        if self.float:  # the fused-activation code, as run does
            emit_activate(e, ins[0], outs[0], math.prod(self.step.out_shapes[0]), 3, Expr(f"float64({lo})"),
                          Expr(f"float64({hi})"))
        else:
            e.elementwise(outs[0], self.step.out_shapes[0], [operand(self.step, ins, 0)],
                          lambda a: f"min(max({a}, {t}({lo})), {t}({hi}))")

    def run(self, ins, outs, scratch):
        lo, hi = (ins[i].reshape(-1)[0].item() if i else v for i, v in zip(self.runtime, (self.lo, self.hi), strict=True))
        if self.float:
            activate(ins[0], outs[0], 3, lo, hi)
        else:
            np.maximum(ins[0], lo, out=outs[0])
            np.minimum(outs[0], hi, out=outs[0])


@register("PRelu")
class PRelu(Kernel):
    """y = x if x >= 0 else slope * x; a per-channel (or scalar) slope runs in Numba."""

    n_inputs = (2, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        xs = step.in_shapes[0]
        s = step.consts[1]
        check_dtypes(step, [0, 1], NUMBERS)
        same_shape(step)
        if broadcast(step, [xs, step.in_shapes[1]]) != tuple(xs):
            raise step.error(f"slope of shape {list(step.in_shapes[1])} does not broadcast to {list(xs)}")
        self.slope = None
        if s is None:
            return
        try:
            full = np.broadcast_to(s, xs)
        except ValueError:
            raise step.error(f"slope of shape {list(s.shape)} does not broadcast to {list(xs)}") from None
        same_for_all_samples = s.ndim < len(xs) or s.shape[0] == 1
        if same_for_all_samples and len(xs) >= 2 and step.out_dtypes[0] in ("float32", "float64"):
            flat = full[0].reshape(xs[1], -1)
            if np.all(flat == flat[:, :1]):  # one slope per channel (or one for all)
                self.slope = np.ascontiguousarray(flat[:, 0], dtype=step.out_dtypes[0])

    def emit(self, e, ins, outs):
        shape = self.step.out_shapes[0]
        if self.slope is not None:
            s3 = e.lit((shape[0], shape[1], math.prod(shape[2:])))
            e.call(_channel_prelu, Expr(f"{ins[0]}.reshape({s3})"), Expr(f"{outs[0]}.reshape({s3})"), self.slope,
                   work=math.prod(shape))
            return
        ops = [operand(self.step, ins, 0), operand(self.step, ins, 1)]
        e.elementwise(outs[0], shape, ops, lambda x, a: f"({x} if {x} >= 0 else {x} * {a})")

    def run(self, ins, outs, scratch):
        x, y = ins[0], outs[0]
        if self.slope is not None:
            _channel_prelu(x.size, x.reshape(x.shape[0], x.shape[1], -1), y.reshape(y.shape[0], y.shape[1], -1), self.slope)
            return
        np.multiply(x, ins[1], out=y)
        np.copyto(y, x, where=x >= 0)
