"""Elementwise float kernels: unary math, broadcasting binary arithmetic, comparisons and logic,
Where, Cast, variadic Min/Max/Sum/Mean. Softmax and the standalone activations that layers also
fuse (Relu, LeakyRelu, Sigmoid, Tanh, HardSigmoid, Clip, PRelu) are in standalone.py; the
activations that no layer fuses (Elu, Gelu, Mish, ...) in activations.py.

Everything with a numpy ufunc writes straight into the planned output (``out=``), broadcasting
as ONNX does (multidirectional numpy broadcasting). Float warnings (log(0), 1/0) are silenced:
onnxruntime returns inf/nan there too. The float activations run the same Numba code as the
fused layers' activations (``nn.activate``), so both agree to the bit.

In the plan function (runtime/codegen.py) an op is either a call of the same Numba kernel or one
scalar expression per element in a loop (``Emitter.elementwise``), written to give ``run``'s
values: the same operations in the same types and order, NaN propagated where numpy's ufuncs
propagate it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.kernels.base import FLOATS, NUMBERS, Kernel, Step, Twin, broadcast, check_dtypes, check_outputs, register
from runtime.kernels.nn import same_shape

_CHUNK = 16384


def _erf_body(x, y):
    n = x.shape[0]
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(t * _CHUNK, min(n, (t + 1) * _CHUNK)):
            y[i] = math.erf(x[i])


_erf = Twin(_erf_body)


# scalar expressions of the emitted code (runtime/codegen.py), one per op; {t} is the dtype's name
_UNARY_EXPR = {
    "Neg": "-{0}", "Abs": "abs({0})", "Exp": "np.exp({0})", "Log": "np.log({0})", "Sqrt": "np.sqrt({0})",
    "Floor": "np.floor({0})", "Ceil": "np.ceil({0})", "Round": "np.rint({0})", "Sign": "np.sign({0})",
    "Reciprocal": "{t}(1) / {0}", "Not": "not {0}", "Sin": "np.sin({0})", "Cos": "np.cos({0})",
    "Softplus": "np.logaddexp({0}, {t}(0))", "Erf": "math.erf({0})",
}
_BINARY_EXPR = {
    "Add": "{0} + {1}", "Sub": "{0} - {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}", "And": "{0} and {1}",
    "Or": "{0} or {1}", "Xor": "{0} != {1}", "Equal": "{0} == {1}", "Less": "{0} < {1}",
    "LessOrEqual": "{0} <= {1}", "Greater": "{0} > {1}", "GreaterOrEqual": "{0} >= {1}",
}


@njit(cache=True, inline="always")
def trunc_div(a, b):
    """Integer division truncating toward zero, as C (and onnxruntime) divide."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def operand(step: Step, ins: list, i: int) -> tuple:
    """Input ``i`` for ``Emitter.elementwise``: a one-element constant as a scalar literal of
    its dtype, anything else as (name, shape)."""
    c = step.consts[i] if i < len(step.consts) else None
    if c is not None and c.size == 1:
        return c.reshape(-1)[0], ()
    return ins[i], tuple(step.in_shapes[i])


_UNARY = {
    "Neg": np.negative,
    "Abs": np.absolute,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.rint,  # half to even, as ONNX Round
    "Sign": np.sign,
    "Reciprocal": np.reciprocal,
    "Not": np.logical_not,
    "Sin": np.sin,
    "Cos": np.cos,
    "Softplus": None,
    "Erf": None,
}


_UNARY_DTYPES = {"Neg": NUMBERS, "Abs": NUMBERS, "Sign": NUMBERS, "Not": ("bool",)}  # the others: floats


@register(*_UNARY)
class Unary(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        self.fn = _UNARY[step.op]
        check_dtypes(step, [0], _UNARY_DTYPES.get(step.op, FLOATS))
        same_shape(step)

    def emit(self, e, ins, outs):
        t = self.step.in_dtypes[0]
        expr = _UNARY_EXPR[self.step.op]
        e.elementwise(outs[0], self.step.out_shapes[0], [operand(self.step, ins, 0)], lambda a: expr.format(a, t=t))

    def run(self, ins, outs, scratch):
        x, y = ins[0], outs[0]
        with np.errstate(all="ignore"):
            if self.fn is not None:
                self.fn(x, out=y)
            elif self.step.op == "Erf":
                _erf(x.size, x.reshape(-1), y.reshape(-1))
            else:  # Softplus: log(1 + exp(x)), stable for large x
                np.logaddexp(x, x.dtype.type(0), out=y)


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.true_divide,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
    "Equal": np.equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
}


_COMPARISONS = ("And", "Or", "Xor", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")  # bool out


@register(*_BINARY)
class Binary(Kernel):
    """A broadcasting binary op; integer Div truncates toward zero like C (and onnxruntime)."""

    n_inputs = (2, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        self.fn = _BINARY[step.op]
        if step.op in ("And", "Or", "Xor"):
            check_dtypes(step, [0, 1], ("bool",))
        elif step.op in ("Add", "Sub", "Mul", "Div"):
            check_dtypes(step, [0, 1], NUMBERS)
        else:  # a comparison
            check_dtypes(step, [0, 1], NUMBERS + ("bool",) if step.op == "Equal" else NUMBERS, output=False)
        dtype = "bool" if step.op in _COMPARISONS else step.in_dtypes[0]
        check_outputs(step, [(broadcast(step, step.in_shapes), dtype)])
        self.int_div = step.op == "Div" and np.dtype(step.out_dtypes[0]).kind in "iu"

    def emit(self, e, ins, outs):
        expr = "{f}({0}, {1})" if self.int_div else _BINARY_EXPR[self.step.op]
        f = e.fn(trunc_div) if self.int_div else ""
        ops = [operand(self.step, ins, 0), operand(self.step, ins, 1)]
        e.elementwise(outs[0], self.step.out_shapes[0], ops, lambda a, b: expr.format(a, b, f=f))

    def run(self, ins, outs, scratch):
        a, b = ins
        with np.errstate(all="ignore"):
            if self.int_div:
                # a - fmod(a, b) is an exact multiple of b, so floor division is exact truncation
                np.floor_divide(a - np.fmod(a, b), b, out=outs[0])
            else:
                self.fn(a, b, out=outs[0])


@register("Pow")
class Pow(Kernel):
    """x ** y; the exponent may have another type, the result has the base's."""

    n_inputs = (2, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0], NUMBERS)
        check_dtypes(step, [1], NUMBERS, output=False)
        check_outputs(step, [(broadcast(step, step.in_shapes), step.in_dtypes[0])])

    def emit(self, e, ins, outs):
        t = self.step.out_dtypes[0]
        ops = [operand(self.step, ins, 0), operand(self.step, ins, 1)]
        if np.dtype(t).kind in "iu" and np.dtype(self.step.in_dtypes[1]).kind == "f":
            expr = "{t}(np.power(float64({0}), float64({1})))"  # in float64, then truncated, as run does
        else:
            expr = "np.power({0}, {t}({1}))"
        e.elementwise(outs[0], self.step.out_shapes[0], ops, lambda a, b: expr.format(a, b, t=t))

    def run(self, ins, outs, scratch):
        with np.errstate(all="ignore"):
            x, e = ins
            if np.dtype(x.dtype).kind in "iu" and np.dtype(e.dtype).kind == "f":
                np.copyto(outs[0], np.power(x.astype(np.float64), e), casting="unsafe")
            else:
                np.power(x, e.astype(x.dtype, copy=False), out=outs[0])


_VARIADIC = {"Min": np.minimum, "Max": np.maximum, "Sum": np.add, "Mean": np.add}


@register(*_VARIADIC)
class Variadic(Kernel):
    """Min, Max, Sum, Mean over any number of broadcasting inputs."""

    n_inputs = (1, None)

    def __init__(self, step: Step):
        super().__init__(step)
        if any(s is None for s in step.in_shapes):
            raise step.error("an input is missing")
        check_dtypes(step, range(len(step.in_shapes)), NUMBERS)
        check_outputs(step, [(broadcast(step, step.in_shapes), step.in_dtypes[0])])

    def emit(self, e, ins, outs):
        op, t = self.step.op, self.step.out_dtypes[0]
        ops = [operand(self.step, ins, i) for i in range(len(ins))]

        def expr(*a):
            if op in ("Min", "Max"):  # np.minimum / np.maximum propagate NaN, as run's ufuncs do
                f = "np.minimum" if op == "Min" else "np.maximum"
                acc = a[0]
                for b in a[1:]:
                    acc = f"{f}({acc}, {b})"
                return acc
            acc = "(" + " + ".join(a) + ")"  # left to right in the output type, as run adds
            return f"{acc} / {t}({len(a)})" if op == "Mean" and len(a) > 1 else acc

        e.elementwise(outs[0], self.step.out_shapes[0], ops, expr)

    def run(self, ins, outs, scratch):
        y = outs[0]
        fn = _VARIADIC[self.step.op]
        np.copyto(y, ins[0])
        for x in ins[1:]:
            fn(y, x, out=y)
        if self.step.op == "Mean" and len(ins) > 1:
            y /= y.dtype.type(len(ins))


@register("Where")
class Where(Kernel):
    n_inputs = (3, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0], ("bool",), output=False)
        check_dtypes(step, [1, 2], NUMBERS + ("bool",))
        check_outputs(step, [(broadcast(step, step.in_shapes), step.in_dtypes[1])])

    def emit(self, e, ins, outs):
        ops = [operand(self.step, ins, i) for i in range(3)]
        e.elementwise(outs[0], self.step.out_shapes[0], ops, lambda c, x, y: f"({x} if {c} else {y})")

    def run(self, ins, outs, scratch):
        cond, x, y = ins
        np.copyto(outs[0], y)
        np.copyto(outs[0], x, where=cond)


# ONNX TensorProto element types the runtime knows, by enum value
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 11: "float64",
               13: "uint64"}


@register("Cast", "CastLike")
class Cast(Kernel):
    """Conversion with C semantics: floats truncate toward zero, nonzero becomes True."""

    n_inputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0], NUMBERS + ("bool",), output=False)
        if step.op == "Cast":
            to = step.attr("to")
            if _ONNX_TYPES.get(to) != step.out_dtypes[0]:
                raise step.error(f"cannot cast to ONNX element type {to} (output is {step.out_dtypes[0]})")
        elif len(step.in_shapes) != 2 or step.in_dtypes[1] != step.out_dtypes[0]:
            raise step.error("CastLike needs a second input, whose dtype the output has")
        check_outputs(step, [(step.in_shapes[0], step.out_dtypes[0])])
        if step.out_dtypes[0] not in NUMBERS + ("bool",):
            raise step.error(f"cannot cast to {step.out_dtypes[0]}")

    def emit(self, e, ins, outs):
        t = self.step.out_dtypes[0]
        expr = "{0} != 0" if t == "bool" else t + "({0})"  # nonzero is True; numbers convert as C does
        e.elementwise(outs[0], self.step.out_shapes[0], [operand(self.step, ins, 0)], expr.format)

    def run(self, ins, outs, scratch):
        with np.errstate(all="ignore"):
            np.copyto(outs[0], ins[0], casting="unsafe")
