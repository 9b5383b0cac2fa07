"""Tensor-layout kernels: views (Reshape, Flatten, Squeeze, Unsqueeze, Identity), copies
(Transpose, Concat, Split, Slice, Gather, Expand, Tile, Pad), the Reduce family and
ArgMax/ArgMin.

Every output shape is static in the artifact, so shape-like inputs (Reshape's shape, Expand's
shape, Split's sizes) are not needed at run time: the kernels reshape or broadcast to the
recorded output shape. Inputs that decide *which* elements move (Slice starts, Pad pads, Reduce
axes) must be constants of the artifact; they are read once when the session is built.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Kernel, Step, Twin, register


def _const_ints(step: Step, i: int, what: str) -> list[int] | None:
    """Constant integer input ``i`` as a list, None when the input is absent."""
    if len(step.in_shapes) <= i or step.in_shapes[i] is None:
        return None
    c = step.consts[i]
    if c is None:
        raise step.error(f"{what} must be a constant (it is computed at run time in this graph)")
    return [int(v) for v in np.asarray(c).reshape(-1)]


def _axes(step: Step, axes, rank: int) -> list[int]:
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise step.error(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    return out


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
class View(Kernel):
    """The output is the input's memory with the recorded output shape."""

    view = True

    def __init__(self, step: Step):
        super().__init__(step)
        self.shape = tuple(step.out_shapes[0])
        if math.prod(self.shape) != math.prod(step.in_shapes[0]):
            raise step.error(f"cannot view shape {list(step.in_shapes[0])} as {list(self.shape)}")

    def emit(self, e, ins, outs):
        e.line(f"{outs[0]} = {ins[0]}.reshape({e.lit(self.shape)})")

    def run(self, ins, outs, scratch):
        return [ins[0].reshape(self.shape)]


@register("Transpose")
class Transpose(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        r = len(step.in_shapes[0])
        self.perm = _axes(step, step.attr("perm") or list(range(r))[::-1], r)
        if sorted(self.perm) != list(range(r)):
            raise step.error(f"perm {self.perm} is not a permutation of {r} axes")

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0].transpose(self.perm))


@register("Concat")
class Concat(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        self.axis = _axes(step, [int(step.attr("axis", 0))], len(step.out_shapes[0]))[0]

    def run(self, ins, outs, scratch):
        np.concatenate([x for x in ins if x is not None], axis=self.axis, out=outs[0])


@register("Split")
class Split(Kernel):
    """Split along ``axis``; the part sizes are the recorded output shapes (however the model
    gave them: ``split`` attribute or input, ``num_outputs``, or equal parts)."""

    def __init__(self, step: Step):
        super().__init__(step)
        r = len(step.in_shapes[0])
        axis = _axes(step, [int(step.attr("axis", 0))], r)[0]
        self.parts = []
        start = 0
        for shape in step.out_shapes:
            idx = [slice(None)] * r
            idx[axis] = slice(start, start + shape[axis])
            self.parts.append(tuple(idx))
            start += shape[axis]
        if start != step.in_shapes[0][axis]:
            raise step.error(f"outputs cover {start} of the {step.in_shapes[0][axis]} elements on axis {axis}")

    def run(self, ins, outs, scratch):
        for idx, out in zip(self.parts, outs, strict=True):
            np.copyto(out, ins[0][idx])


@register("Slice")
class Slice(Kernel):
    """Slice with constant starts/ends/axes/steps (inputs, or attributes before opset 10),
    clamped as ONNX specifies."""

    def __init__(self, step: Step):
        super().__init__(step)
        shape = step.in_shapes[0]
        if len(step.in_shapes) > 1:
            starts = _const_ints(step, 1, "starts")
            ends = _const_ints(step, 2, "ends")
            axes = _const_ints(step, 3, "axes")
            steps = _const_ints(step, 4, "steps")
        else:
            starts, ends, axes, steps = step.attr("starts"), step.attr("ends"), step.attr("axes"), None
        if starts is None or ends is None or len(starts) != len(ends):
            raise step.error("starts and ends must be given with the same length")
        axes = _axes(step, axes if axes is not None else range(len(starts)), len(shape))
        steps = steps if steps is not None else [1] * len(starts)
        if not len(axes) == len(steps) == len(starts):
            raise step.error("starts, ends, axes and steps must have the same length")
        idx = [slice(None)] * len(shape)
        for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
            idx[a] = self._slice(shape[a], s, e, st)
        self.idx = tuple(idx)
        got = tuple(len(range(*sl.indices(d))) for sl, d in zip(self.idx, shape, strict=True))
        if got != tuple(step.out_shapes[0]):
            raise step.error(f"slice gives shape {list(got)}, the graph says {list(step.out_shapes[0])}")

    def _slice(self, dim: int, s: int, e: int, st: int) -> slice:
        if st == 0:
            raise self.step.error("steps must be nonzero")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            return slice(min(max(s, 0), dim), min(max(e, 0), dim), st)
        s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        return slice(s, e if e >= 0 else None, st)

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0][self.idx])


@register("Gather")
class Gather(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        self.axis = _axes(step, [int(step.attr("axis", 0))], len(xs))[0]
        # the indices' shape as the output records it (a scalar index may be stored as [1])
        self.idx_shape = tuple(ys[self.axis:self.axis + len(ys) - len(xs) + 1])
        c = step.consts[1]
        self.idx = None
        if c is not None:
            self.idx = self._check(c)

    def _check(self, idx: np.ndarray) -> np.ndarray:
        dim = self.step.in_shapes[0][self.axis]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise self.step.error(f"indices out of range [-{dim}, {dim - 1}]")
        return np.asarray(idx, dtype=np.int64).reshape(self.idx_shape)

    def run(self, ins, outs, scratch):
        idx = self.idx if self.idx is not None else self._check(ins[1])
        np.take(ins[0], idx, axis=self.axis, out=outs[0])


@register("Expand")
class Expand(Kernel):
    """Broadcast to the recorded output shape."""

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0])


@register("Tile")
class Tile(Kernel):
    """Tile as one broadcast copy: the output viewed as (r0, d0, r1, d1, ...) takes the input
    viewed as (1, d0, 1, d1, ...)."""

    def __init__(self, step: Step):
        super().__init__(step)
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        if len(xs) != len(ys) or any(d and y % d for d, y in zip(xs, ys, strict=True)):
            raise step.error(f"cannot tile shape {list(xs)} to {list(ys)}")
        reps = [y // d if d else 0 for d, y in zip(xs, ys, strict=True)]
        self.out_view = tuple(v for r, d in zip(reps, xs, strict=True) for v in (r, d))
        self.in_view = tuple(v for d in xs for v in (1, d))

    def run(self, ins, outs, scratch):
        np.copyto(outs[0].reshape(self.out_view), ins[0].reshape(self.in_view))


@register("Pad")
class Pad(Kernel):
    """constant / reflect / edge / wrap padding; negative pads crop. Pads (and axes) are an
    attribute before opset 11 or constant inputs; the constant value may be a run-time input."""

    def __init__(self, step: Step):
        super().__init__(step)
        shape = step.in_shapes[0]
        r = len(shape)
        self.mode = step.attr("mode", "constant")
        if self.mode not in ("constant", "reflect", "edge", "wrap"):
            raise step.error(f"unknown pad mode '{self.mode}'")
        pads = step.attr("pads") if len(step.in_shapes) < 2 else _const_ints(step, 1, "pads")
        axes = _const_ints(step, 3, "axes")
        axes = _axes(step, axes if axes is not None else range(r), r)
        if pads is None or len(pads) != 2 * len(axes):
            raise step.error(f"pads must have 2 * {len(axes)} values, got {pads}")
        begin, end = [0] * r, [0] * r
        for k, a in enumerate(axes):
            begin[a], end[a] = pads[k], pads[k + len(axes)]
        # negative pads crop the input; what is left is padded by the positive parts
        self.crop = tuple(slice(max(0, -b), d - max(0, -e)) for b, e, d in zip(begin, end, shape, strict=True))
        self.pos = [(max(0, b), max(0, e)) for b, e in zip(begin, end, strict=True)]
        self.inner = tuple(slice(b, b + (s.stop - s.start)) for (b, _), s in zip(self.pos, self.crop, strict=True))
        self.value = float(step.attr("value", 0.0))
        self.value_input = len(step.in_shapes) > 2 and step.in_shapes[2] is not None
        if self.mode != "constant" and any(b or e for b, e in self.pos):
            for (b, e), s in zip(self.pos, self.crop, strict=True):
                if self.mode == "reflect" and max(b, e) > s.stop - s.start - 1 or s.stop == s.start:
                    raise step.error(f"{self.mode} padding needs more input than the axis holds")

    def run(self, ins, outs, scratch):
        x, y = ins[0][self.crop], outs[0]
        if self.mode == "constant":
            value = ins[2].reshape(-1)[0] if self.value_input else self.value
            y.fill(value)
            y[self.inner] = x
        else:
            np.copyto(y, np.pad(x, self.pos, mode=self.mode))


_REDUCE = {
    "ReduceSum": np.sum,
    "ReduceMean": np.mean,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
    "ReduceProd": np.prod,
}


@register(*_REDUCE)
class Reduce(Kernel):
    """Reduce over constant axes (attribute, or input from ReduceSum-13 / opset 18), keepdims,
    noop_with_empty_axes."""

    def __init__(self, step: Step):
        super().__init__(step)
        r = len(step.in_shapes[0])
        axes = _const_ints(step, 1, "axes") if len(step.in_shapes) > 1 else step.attr("axes")
        self.noop = not axes and bool(step.attr("noop_with_empty_axes", 0))
        axes = _axes(step, axes or range(r), r)
        self.axes = tuple(sorted(set(axes)))
        self.kept = tuple(1 if i in self.axes else d for i, d in enumerate(step.in_shapes[0]))
        self.fn = _REDUCE[step.op]

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

    def run(self, ins, outs, scratch):
        x = ins[0].reshape(self.shape3)
        y = outs[0].reshape(self.shape3[0], self.shape3[2])
        _arg_extreme(x.size, x, y, self.lowest, self.last)
