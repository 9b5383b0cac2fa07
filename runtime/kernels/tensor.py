"""Tensor-layout kernels: views (Reshape, Flatten, Squeeze, Unsqueeze, Identity) and copies
(Transpose, Concat, Split, Slice, Gather, Expand, Tile, Pad); the Reduce family and
ArgMax/ArgMin are in reduce.py.

Every output shape is static in the artifact, so shape-like inputs (Reshape's shape, Expand's
shape, Split's sizes) are not needed at run time: the kernels reshape or broadcast to the
recorded output shape. Inputs that decide *which* elements move (Slice starts, Pad pads, Reduce
axes) must be constants of the artifact; they are read once when the session is built.

In the plan function (runtime/codegen.py) every copy is a strided copy of an index box
(runtime/kernels/strided.py) whose offsets and strides are worked out here; Gather, whose
indices may be a run-time input, and the reflect/edge/wrap modes of Pad, which read through
per-axis index tables, have loops of their own.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.errors import BnncError
from runtime.kernels.base import DTYPES, Kernel, Step, Twin, broadcast, check_dtypes, check_outputs, register
from runtime.kernels.strided import c_strides, emit_copy


def _const_ints(step: Step, i: int, what: str) -> list[int] | None:
    """Constant integer input ``i`` as a list, None when the input is absent."""
    if len(step.in_shapes) <= i or step.in_shapes[i] is None:
        return None
    c = step.consts[i]
    if c is None:
        raise step.error(f"{what} must be a constant (it is computed at run time in this graph)")
    return [int(v) for v in np.asarray(c).reshape(-1)]


def _same_dtype(step: Step) -> None:
    """Data movement: the output has the data input's dtype, one the compiled code can hold."""
    check_dtypes(step, [0], DTYPES)


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
    n_inputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        _same_dtype(step)
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
        _same_dtype(step)
        check_outputs(step, [(tuple(step.in_shapes[0][p] for p in self.perm), step.in_dtypes[0])])

    def emit(self, e, ins, outs):
        cs = c_strides(self.step.in_shapes[0])
        ys = tuple(self.step.out_shapes[0])
        emit_copy(e, ins[0], 0, [cs[p] for p in self.perm], outs[0], 0, c_strides(ys), ys)

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0].transpose(self.perm))


@register("Concat")
class Concat(Kernel):
    n_inputs = (1, None)

    def __init__(self, step: Step):
        super().__init__(step)
        ys = tuple(step.out_shapes[0])
        self.axis = a = _axes(step, [int(step.attr("axis", 0))], len(ys))[0]
        check_dtypes(step, range(len(step.in_shapes)), DTYPES)
        parts = [tuple(s) for s in step.in_shapes if s is not None]
        if any(len(s) != len(ys) or s[:a] + s[a + 1:] != ys[:a] + ys[a + 1:] for s in parts) \
                or sum(s[a] for s in parts) != ys[a]:
            raise step.error(f"inputs {', '.join(str(list(s)) for s in parts)} do not concatenate to {list(ys)} on axis {a}")

    def emit(self, e, ins, outs):
        ds = c_strides(self.step.out_shapes[0])
        start = 0
        for x, shape in zip(ins, self.step.in_shapes, strict=True):
            if x is None:
                continue
            emit_copy(e, x, 0, c_strides(shape), outs[0], start * ds[self.axis], ds, shape)
            start += shape[self.axis]

    def run(self, ins, outs, scratch):
        np.concatenate([x for x in ins if x is not None], axis=self.axis, out=outs[0])


@register("Split")
class Split(Kernel):
    """Split along ``axis``; the part sizes are the recorded output shapes (however the model
    gave them: ``split`` attribute or input, ``num_outputs``, or equal parts)."""

    n_inputs = (1, 2)
    n_outputs = (1, None)

    def __init__(self, step: Step):
        super().__init__(step)
        xs = tuple(step.in_shapes[0])
        r = len(xs)
        self.axis = axis = _axes(step, [int(step.attr("axis", 0))], r)[0]
        check_dtypes(step, [0], DTYPES, output=False)
        for shape, dtype in zip(step.out_shapes, step.out_dtypes, strict=True):
            if shape is None:
                raise step.error("every part must be an output (one is unnamed)")
            if dtype != step.in_dtypes[0] or len(shape) != r or shape[:axis] + shape[axis + 1:] != xs[:axis] + xs[axis + 1:]:
                raise step.error(f"output {dtype} {list(shape)} is not a part of the {step.in_dtypes[0]} input {list(xs)}")
        self.parts = []
        start = 0
        for shape in step.out_shapes:
            idx = [slice(None)] * r
            idx[axis] = slice(start, start + shape[axis])
            self.parts.append(tuple(idx))
            start += shape[axis]
        if start != step.in_shapes[0][axis]:
            raise step.error(f"outputs cover {start} of the {step.in_shapes[0][axis]} elements on axis {axis}")

    def emit(self, e, ins, outs):
        cs = c_strides(self.step.in_shapes[0])
        for idx, out, shape in zip(self.parts, outs, self.step.out_shapes, strict=True):
            emit_copy(e, ins[0], idx[self.axis].start * cs[self.axis], cs, out, 0, c_strides(shape), shape)

    def run(self, ins, outs, scratch):
        for idx, out in zip(self.parts, outs, strict=True):
            np.copyto(out, ins[0][idx])


@register("Slice")
class Slice(Kernel):
    """Slice with constant starts/ends/axes/steps (inputs, or attributes before opset 10),
    clamped as ONNX specifies."""

    n_inputs = (1, 5)

    def __init__(self, step: Step):
        super().__init__(step)
        _same_dtype(step)
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
        cs = c_strides(shape)
        firsts = [sl.indices(d) for sl, d in zip(self.idx, shape, strict=True)]
        self.offset = sum(f[0] * c for f, c in zip(firsts, cs, strict=True)) if all(got) else 0
        self.strides = [f[2] * c for f, c in zip(firsts, cs, strict=True)]

    def _slice(self, dim: int, s: int, e: int, st: int) -> slice:
        if st == 0:
            raise self.step.error("steps must be nonzero")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            return slice(min(max(s, 0), dim), min(max(e, 0), dim), st)
        s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        return slice(s, e if e >= 0 else None, st)

    def emit(self, e, ins, outs):
        ys = tuple(self.step.out_shapes[0])
        emit_copy(e, ins[0], self.offset, self.strides, outs[0], 0, c_strides(ys), ys)

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0][self.idx])


@njit(cache=True, nogil=True)
def _check_indices(idx, dim):
    """Raise when an index lies outside [-dim, dim - 1] (run-time indices only)."""
    for j in range(idx.shape[0]):
        if idx[j] < -dim or idx[j] >= dim:
            raise BnncError("a run-time index of Gather is out of range")


def _gather_body(x, idx, y):
    """y[p, j, :] = x[p, idx[j], :] for (P, D, Q) x and (P, J, Q) y; a negative index counts
    from the end."""
    P, D, Q = x.shape
    J = idx.shape[0]
    for pj in prange(P * J):
        p = pj // J
        j = pj - p * J
        k = idx[j]
        if k < 0:
            k += D
        src = x[p, k]
        dst = y[p, j]
        for q in range(Q):
            dst[q] = src[q]


_gather = Twin(_gather_body)


@register("Gather")
class Gather(Kernel):
    n_inputs = (2, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        xs, ys = tuple(step.in_shapes[0]), tuple(step.out_shapes[0])
        self.axis = a = _axes(step, [int(step.attr("axis", 0))], len(xs))[0]
        _same_dtype(step)
        if step.in_shapes[1] is None or step.in_dtypes[1] not in ("int32", "int64"):
            raise step.error(f"indices must be int32 or int64, got {step.in_dtypes[1]}")
        # the indices' shape as the output records it (a scalar index may be stored as [1])
        self.idx_shape = tuple(ys[a:a + len(ys) - len(xs) + 1])
        if len(ys) < len(xs) - 1 or ys[:a] != xs[:a] or ys[a + len(self.idx_shape):] != xs[a + 1:] \
                or math.prod(self.idx_shape) != math.prod(step.in_shapes[1]):
            raise step.error(f"gathering {list(step.in_shapes[1])} indices from {list(xs)} on axis {a} does not give {list(ys)}")
        c = step.consts[1]
        self.idx = None
        if c is not None:
            self.idx = self._check(c)
            self.flat_idx = self.idx.reshape(-1)

    def _check(self, idx: np.ndarray) -> np.ndarray:
        dim = self.step.in_shapes[0][self.axis]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise self.step.error(f"indices out of range [-{dim}, {dim - 1}]")
        return np.asarray(idx, dtype=np.int64).reshape(self.idx_shape)

    def emit(self, e, ins, outs):
        xs = self.step.in_shapes[0]
        p, d, q = math.prod(xs[:self.axis]), xs[self.axis], math.prod(xs[self.axis + 1:])
        j = math.prod(self.idx_shape)
        if self.idx is not None:
            idx = self.flat_idx
        else:
            idx = Expr(f"{ins[1]}.reshape(-1)")
            e.call(_check_indices, idx, d)
        e.call(_gather, Expr(f"{ins[0]}.reshape(({p}, {d}, {q}))"), idx, Expr(f"{outs[0]}.reshape(({p}, {j}, {q}))"),
               work=p * j * q)

    def run(self, ins, outs, scratch):
        idx = self.idx if self.idx is not None else self._check(ins[1])
        np.take(ins[0], idx, axis=self.axis, out=outs[0])


@register("Expand")
class Expand(Kernel):
    """Broadcast to the recorded output shape."""

    n_inputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        _same_dtype(step)
        ys = tuple(step.out_shapes[0])
        if len(step.in_shapes[0]) > len(ys) or broadcast(step, [step.in_shapes[0], ys]) != ys:
            raise step.error(f"cannot expand {list(step.in_shapes[0])} to {list(ys)}")

    def emit(self, e, ins, outs):
        xs, ys = tuple(self.step.in_shapes[0]), tuple(self.step.out_shapes[0])
        cs = (0,) * (len(ys) - len(xs)) + c_strides(xs)
        xs = (1,) * (len(ys) - len(xs)) + xs
        ss = [0 if d == 1 else c for d, c in zip(xs, cs, strict=True)]
        emit_copy(e, ins[0], 0, ss, outs[0], 0, c_strides(ys), ys)

    def run(self, ins, outs, scratch):
        np.copyto(outs[0], ins[0])


@register("Tile")
class Tile(Kernel):
    """Tile as one broadcast copy: the output viewed as (r0, d0, r1, d1, ...) takes the input
    viewed as (1, d0, 1, d1, ...)."""

    n_inputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        _same_dtype(step)
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        if len(xs) != len(ys) or any(d and y % d for d, y in zip(xs, ys, strict=True)):
            raise step.error(f"cannot tile shape {list(xs)} to {list(ys)}")
        reps = [y // d if d else 0 for d, y in zip(xs, ys, strict=True)]
        self.out_view = tuple(v for r, d in zip(reps, xs, strict=True) for v in (r, d))
        self.in_view = tuple(v for d in xs for v in (1, d))

    def emit(self, e, ins, outs):
        ss = [c for v in c_strides(self.step.in_shapes[0]) for c in (0, v)]
        emit_copy(e, ins[0], 0, ss, outs[0], 0, c_strides(self.out_view), self.out_view)

    def run(self, ins, outs, scratch):
        np.copyto(outs[0].reshape(self.out_view), ins[0].reshape(self.in_view))


@register("Pad")
class Pad(Kernel):
    """constant / reflect / edge / wrap padding; negative pads crop. Pads (and axes) are an
    attribute before opset 11 or constant inputs; the constant value may be a run-time input."""

    n_inputs = (1, 4)

    def __init__(self, step: Step):
        super().__init__(step)
        _same_dtype(step)
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
        padded = tuple(b + (s.stop - s.start) + e for (b, e), s in zip(self.pos, self.crop, strict=True))
        if tuple(step.out_shapes[0]) != padded or any(s.stop < s.start for s in self.crop):
            raise step.error(f"padding {list(shape)} gives {list(padded)}, the plan says {list(step.out_shapes[0])}")
        if self.value_input and (math.prod(step.in_shapes[2]) != 1 or step.in_dtypes[2] != step.in_dtypes[0]):
            raise step.error(f"the constant value must be one {step.in_dtypes[0]}, got {step.in_dtypes[2]} "
                             f"{list(step.in_shapes[2])}")
        if self.mode != "constant" and any(b or e for b, e in self.pos):
            for (b, e), s in zip(self.pos, self.crop, strict=True):
                if self.mode == "reflect" and max(b, e) > s.stop - s.start - 1 or s.stop == s.start:
                    raise step.error(f"{self.mode} padding needs more input than the axis holds")
        self.fill = np.full(1, self.value).astype(step.out_dtypes[0])  # the constant, as run's fill casts it
        # reflect / edge / wrap: per axis, the input index each output position reads
        self.tables = None if self.mode == "constant" else [
            np.ascontiguousarray(np.pad(np.arange(d)[s], p, mode=self.mode), dtype=np.int64)
            for d, s, p in zip(shape, self.crop, self.pos, strict=True)]

    def emit(self, e, ins, outs):
        x, y = ins[0], outs[0]
        xs, ys = tuple(self.step.in_shapes[0]), tuple(self.step.out_shapes[0])
        if self.tables is not None:
            if math.prod(ys):
                tables = [e.lit(t) for t in self.tables]
                idx = e.loops(ys)
                e.line(f"{y}[{', '.join(idx)}] = {x}[{', '.join(f'{t}[{i}]' for t, i in zip(tables, idx))}]")
                e.end(len(ys))
            return
        box = [max(0, s.stop - s.start) for s in self.crop]
        cs, ds = c_strides(xs), c_strides(ys)
        emit_copy(e, x, sum(s.start * c for s, c in zip(self.crop, cs, strict=True)), cs,
                  y, sum(s.start * c for s, c in zip(self.inner, ds, strict=True)), ds, box)
        value = ins[2] if self.value_input else e.lit(self.fill)
        for k, (b, a) in enumerate(self.pos):
            # the border slabs of axis k: before and after the input, inside it on axes < k
            for lo, size in ((0, b), (b + box[k], a)):
                slab = box[:k] + [size] + list(ys[k + 1:])
                start = [s.start for s in self.inner[:k]] + [lo] + [0] * (len(ys) - k - 1)
                emit_copy(e, value, 0, [0] * len(ys), y, sum(i * c for i, c in zip(start, ds, strict=True)), ds, slab)

    def run(self, ins, outs, scratch):
        x, y = ins[0][self.crop], outs[0]
        if self.mode == "constant":
            value = ins[2].reshape(-1)[0] if self.value_input else self.value
            y.fill(value)
            y[self.inner] = x
        else:
            np.copyto(y, np.pad(x, self.pos, mode=self.mode))
