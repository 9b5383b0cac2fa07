"""The Reduce family (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd) and ArgMax /
ArgMin.

A reduction over constant axes is, once the axes of size 1 are dropped and neighbouring axes of
the same kind merged, a reduction over the middle axis of a (P, n, Q) array: y[p, q] is the
sum, product or extreme of x[p, :, q]. Sums and products accumulate in float64 for float
inputs (numpy and onnxruntime accumulate in the input's type: the results agree to its
rounding) and in 64-bit integers for integer ones (wrapping as the input type would); a mean is
that sum divided by the count (for integers truncated toward zero, as numpy's cast does).
Maxima and minima propagate NaN, as numpy's do. Axes that interleave (reduce axes 0 and 2 of
(A, B, C)) are first copied into a workspace with the kept axes in front (runtime/kernels/
strided.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import NUMBERS, Kernel, Step, Twin, check_dtypes, register
from runtime.kernels.strided import c_strides, emit_copy
from runtime.kernels.tensor import _axes, _const_ints

_BLOCK = 256  # columns q reduced together by one task


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _fold(v, init, prod):
    """init + sum of the 1-D v (init * product if prod), in init's type; the terms may be
    reassociated so that the loop vectorizes (in float64 that costs nothing at float32)."""
    acc = init
    if prod:
        for i in range(v.shape[0]):
            acc *= v[i]
    else:
        for i in range(v.shape[0]):
            acc += v[i]
    return acc


def _accumulate_rows_body(x, y, init, prod, mean, count):
    """y[p] = sum (product if prod) of the row x[p, :], divided by count if mean, for a (P, n)
    x; the accumulator has the type of ``init`` (0 or 1 of it)."""
    for p in prange(x.shape[0]):
        acc = _fold(x[p], init, prod)
        if mean:
            y[p] = acc / count
        else:
            y[p] = acc


def _accumulate_body(x, y, init, prod, mean, count):
    """y[p, q] = sum (product if prod) over i of x[p, i, q], divided by count if mean, for a
    (P, n, Q) x: one task per p and block of columns q, adding whole rows."""
    P, n, Q = x.shape
    blocks = (Q + _BLOCK - 1) // _BLOCK
    for t in prange(P * blocks):
        p = t // blocks
        lo = (t - p * blocks) * _BLOCK
        hi = min(Q, lo + _BLOCK)
        acc = np.full(hi - lo, init)
        for i in range(n):
            row = x[p, i, lo:hi]
            if prod:
                for j in range(hi - lo):
                    acc[j] *= row[j]
            else:
                for j in range(hi - lo):
                    acc[j] += row[j]
        out = y[p, lo:hi]
        if mean:
            for j in range(hi - lo):
                out[j] = acc[j] / count
        else:
            for j in range(hi - lo):
                out[j] = acc[j]


def _extreme_rows_body(x, y, lowest):
    """y[p] = max (min if lowest) of the row x[p, :] of a (P, n) x, n >= 1; NaN wins."""
    for p in prange(x.shape[0]):
        v = x[p]
        m = v[0]
        if lowest:
            for i in range(1, v.shape[0]):
                m = np.minimum(m, v[i])
        else:
            for i in range(1, v.shape[0]):
                m = np.maximum(m, v[i])
        y[p] = m


def _extreme_body(x, y, lowest):
    """y[p, q] = max (min if lowest) over i of x[p, i, q] for a (P, n, Q) x, n >= 1; NaN wins."""
    P, n, Q = x.shape
    blocks = (Q + _BLOCK - 1) // _BLOCK
    for t in prange(P * blocks):
        p = t // blocks
        lo = (t - p * blocks) * _BLOCK
        hi = min(Q, lo + _BLOCK)
        out = y[p, lo:hi]
        out[:] = x[p, 0, lo:hi]
        for i in range(1, n):
            row = x[p, i, lo:hi]
            if lowest:
                for j in range(hi - lo):
                    out[j] = np.minimum(out[j], row[j])
            else:
                for j in range(hi - lo):
                    out[j] = np.maximum(out[j], row[j])


_accumulate = Twin(_accumulate_body)
_accumulate_rows = Twin(_accumulate_rows_body)
_extreme = Twin(_extreme_body)
_extreme_rows = Twin(_extreme_rows_body)

_REDUCE = {
    "ReduceSum": np.sum,
    "ReduceMean": np.mean,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
}


def _runs(shape: tuple[int, ...], axes: tuple[int, ...]) -> list[list]:
    """[size, reduced] of the runs of neighbouring axes of one kind, axes of size 1 left out."""
    runs: list[list] = []
    for k, d in enumerate(shape):
        if d == 1:
            continue
        if runs and runs[-1][1] == (k in axes):
            runs[-1][0] *= d
        else:
            runs.append([d, k in axes])
    return runs


@register(*_REDUCE)
class Reduce(Kernel):
    """Reduce over constant axes (attribute, or input from ReduceSum-13 / opset 18), keepdims,
    noop_with_empty_axes."""

    n_inputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0], NUMBERS)
        r = len(step.in_shapes[0])
        axes = _const_ints(step, 1, "axes") if len(step.in_shapes) > 1 else step.attr("axes")
        self.noop = not axes and bool(step.attr("noop_with_empty_axes", 0))
        axes = _axes(step, axes or range(r), r)
        self.axes = tuple(sorted(set(axes)))
        self.kept = tuple(1 if i in self.axes else d for i, d in enumerate(step.in_shapes[0]))
        self.fn = _REDUCE[step.op]
        shape = tuple(step.in_shapes[0])
        self.count = math.prod(shape[a] for a in self.axes)
        keep = bool(step.attr("keepdims", 1))
        want = shape if self.noop else self.kept if keep else tuple(d for i, d in enumerate(shape) if i not in self.axes)
        if tuple(step.out_shapes[0]) != want:
            raise step.error(f"output shape {list(step.out_shapes[0])} is not the reduced shape {list(want)}")
        if not self.noop and self.count == 0 and math.prod(self.kept) and step.op in ("ReduceMax", "ReduceMin"):
            raise step.error("the reduced axes are empty: there is no extreme to take")

    def emit(self, e, ins, outs):
        x, y = ins[0], outs[0]
        shape = tuple(self.step.in_shapes[0])
        if self.noop or self.count == 1:  # nothing to combine: the values themselves
            emit_copy(e, x, 0, c_strides(shape), y, 0, c_strides(shape), shape)
            return
        if math.prod(self.kept) == 0:
            return
        dt = np.dtype(self.step.out_dtypes[0])
        if self.count == 0:  # an empty sum, product, mean
            empty = {"ReduceSum": 0, "ReduceProd": 1}.get(self.step.op, math.nan if dt.kind == "f" else 0)
            e.line(f"{y}.fill({e.lit(dt.type(empty))})")
            return
        runs = _runs(shape, self.axes)
        kinds = [red for _, red in runs]
        if kinds.count(True) > 1:
            x = self._kept_first(e, x, shape)
            p, n, q = math.prod(self.kept), self.count, 1
        else:
            i = kinds.index(True)
            p = math.prod(s for s, _ in runs[:i])
            n, q = runs[i][0], math.prod(s for s, _ in runs[i + 1:])
        self._emit_reduce(e, x, y, (p, n, q), dt)

    def _kept_first(self, e, x: str, shape: tuple[int, ...]) -> str:
        """A workspace copy of x with the kept axes in front of the reduced ones."""
        order = [k for k in range(len(shape)) if k not in self.axes] + list(self.axes)
        cs = c_strides(shape)
        moved = tuple(shape[k] for k in order)
        w = e.work(moved, self.step.in_dtypes[0], "reduce")
        emit_copy(e, x, 0, [cs[k] for k in order], w, 0, c_strides(moved), moved)
        return w

    def _emit_reduce(self, e, x: str, y: str, pnq: tuple[int, int, int], dt: np.dtype) -> None:
        """The reduction over the middle axis of x viewed as (P, n, Q) into y viewed as (P, Q);
        with Q = 1 through the row kernels, whose rows are contiguous."""
        op, work = self.step.op, math.prod(self.step.in_shapes[0])
        p, n, q = pnq
        rows = q == 1
        x, y = (Expr(f"{x}.reshape(({p}, {n}))"), Expr(f"{y}.reshape(-1)")) if rows else \
            (Expr(f"{x}.reshape(({p}, {n}, {q}))"), Expr(f"{y}.reshape(({p}, {q}))"))
        if op in ("ReduceMax", "ReduceMin"):
            e.call(_extreme_rows if rows else _extreme, x, y, op == "ReduceMin", work=work)
            return
        acc = np.float64 if dt.kind == "f" else np.uint64 if dt.kind == "u" else np.int64
        init = acc(1 if op == "ReduceProd" else 0)
        e.call(_accumulate_rows if rows else _accumulate, x, y, init, op == "ReduceProd", op == "ReduceMean",
               float(self.count), work=work)

    def run(self, ins, outs, scratch):
        if self.noop:
            np.copyto(outs[0], ins[0])
        else:
            self.fn(ins[0], axis=self.axes, keepdims=True, out=outs[0].reshape(self.kept))


_ARG_BLOCK = 256  # columns q scanned together by one task of _arg_extreme


@njit(cache=True, nogil=True)
def _arg_extreme_row(v, lowest, last):
    """The index of the largest v[i] (the smallest if lowest): the first one, or the last if last.

    A scan that replaces the running best when v[i] > best (>= for the last index; < and <= for
    ArgMin). A comparison with NaN is false, so a NaN never replaces anything and only a NaN at
    index 0 is ever chosen, as in onnxruntime's scan. Four explicit loops: LLVM does not unswitch
    the flags out of a loop, and a branch per element costs 3-4x."""
    best = v[0]
    k = 0
    n = v.shape[0]
    if lowest and last:
        for i in range(1, n):
            if v[i] <= best:
                best, k = v[i], i
    elif lowest:
        for i in range(1, n):
            if v[i] < best:
                best, k = v[i], i
    elif last:
        for i in range(1, n):
            if v[i] >= best:
                best, k = v[i], i
    else:
        for i in range(1, n):
            if v[i] > best:
                best, k = v[i], i
    return k


@njit(cache=True, nogil=True)
def _arg_extreme_step(row, i, best, arg, lowest, last):
    """One row i of a scan of many columns at once: best[j], arg[j] = row[j], i where row[j]
    replaces best[j] by the rule of _arg_extreme_row."""
    m = row.shape[0]
    if lowest and last:
        for j in range(m):
            if row[j] <= best[j]:
                best[j], arg[j] = row[j], i
    elif lowest:
        for j in range(m):
            if row[j] < best[j]:
                best[j], arg[j] = row[j], i
    elif last:
        for j in range(m):
            if row[j] >= best[j]:
                best[j], arg[j] = row[j], i
    else:
        for j in range(m):
            if row[j] > best[j]:
                best[j], arg[j] = row[j], i


def _arg_extreme_body(x, out, lowest, last):
    """out[p, q] = argmax_i x[p, i, q] (argmin if lowest; ties to the first i, or the last if last)
    for an (P, n, Q) array, n >= 1. With Q > 1 a task scans one block of columns q row by row, so
    the inner loop reads contiguous memory whatever Q is."""
    P, n, Q = x.shape
    if Q == 1:
        for p in prange(P):
            out[p, 0] = _arg_extreme_row(x[p, :, 0], lowest, last)
        return
    blocks = (Q + _ARG_BLOCK - 1) // _ARG_BLOCK
    for t in prange(P * blocks):
        p = t // blocks
        lo = (t - p * blocks) * _ARG_BLOCK
        hi = min(Q, lo + _ARG_BLOCK)
        best = x[p, 0, lo:hi].copy()
        arg = out[p, lo:hi]
        arg[:] = 0
        for i in range(1, n):
            _arg_extreme_step(x[p, i, lo:hi], i, best, arg, lowest, last)


_arg_extreme = Twin(_arg_extreme_body)


@register("ArgMax", "ArgMin")
class ArgExtreme(Kernel):
    """ArgMax / ArgMin along ``axis`` (default 0) with keepdims (default 1) and select_last_index
    (default 0, opset 12+); int64 indices."""

    def __init__(self, step: Step):
        super().__init__(step)
        shape = tuple(step.in_shapes[0])
        if not shape:
            raise step.error("the input must have at least one axis")
        check_dtypes(step, [0], NUMBERS, output=False)
        axis = _axes(step, [int(step.attr("axis", 0))], len(shape))[0]
        if shape[axis] == 0:
            raise step.error(f"axis {axis} is empty: there is no extreme to pick")
        keep = bool(step.attr("keepdims", 1))
        want = shape[:axis] + ((1,) if keep else ()) + shape[axis + 1:]
        if tuple(step.out_shapes[0]) != want or step.out_dtypes[0] != "int64":
            raise step.error(f"the output is {step.out_dtypes[0]} {list(step.out_shapes[0])}, expected int64 {list(want)}")
        self.shape3 = (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))
        self.lowest = step.op == "ArgMin"
        self.last = bool(step.attr("select_last_index", 0))

    def emit(self, e, ins, outs):
        p, n, q = self.shape3
        e.call(_arg_extreme, Expr(f"{ins[0]}.reshape(({p}, {n}, {q}))"), Expr(f"{outs[0]}.reshape(({p}, {q}))"),
               self.lowest, self.last, work=p * n * q)

    def run(self, ins, outs, scratch):
        x = ins[0].reshape(self.shape3)
        y = outs[0].reshape(self.shape3[0], self.shape3[2])
        _arg_extreme(x.size, x, y, self.lowest, self.last)
