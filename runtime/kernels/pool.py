"""Float (and integer max) pooling: MaxPool, AveragePool (1-D or 2-D, any stride, dilation,
padding, ceil_mode, count_include_pad) and GlobalAveragePool / GlobalMaxPool.

Windowed pools read the input once, one output row at a time: the window's input rows are
reduced into one row, which is split into its column stride phases (the geometry of conv.py,
padded with the lowest value for max, 0 for average), so that every column tap is a contiguous
run. Pooling is memory-bound, so this beats splitting the whole image first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, NUMBERS, Kernel, Step, Twin, check_dtypes, register, task_threads
from runtime.kernels.conv import _phase_split, _tap_ranges
from runtime.kernels.nn import lift4, window_geometry
from runtime.kernels.pool_emit import emit_pool, fits

_TINY_WORK = 1 << 15  # below this many comparisons or additions a pool runs as plain loops


@njit(cache=True, nogil=True)
def _pool_channel(x, y, vm, ph, div, KH, KW, sh, sw, dh, dw, pt, pl, is_max, pad):
    """Max or average pooling of one channel x (H, W) into y (OH, OW); an average is the window
    sum over input positions divided by div[oh, ow] (the count the caller chose).

    Separable, one output row at a time: the KH input rows of the window are reduced into the
    row vm (long contiguous loops over rows in cache), vm is split into its sw column phases ph
    (see conv.py; ph's border holds the padding value), and the KW taps are then contiguous
    runs of a phase. Maxima use the scalar np.maximum, which LLVM vectorizes (a select written
    out does not)."""
    H, W = x.shape
    OH, OW = y.shape
    for oh in range(OH):
        first = True
        for ki in range(KH):
            ih = oh * sh - pt + ki * dh
            if ih < 0 or ih >= H:
                continue
            src = x[ih]
            if first:
                for i in range(W):
                    vm[i] = src[i]
                first = False
            elif is_max:
                for i in range(W):
                    vm[i] = np.maximum(vm[i], src[i])
            else:
                for i in range(W):
                    vm[i] += src[i]
        if first:
            for i in range(W):
                vm[i] = pad
        _phase_split(vm.reshape(1, 1, W), ph, 0, pl)
        o = y[oh]
        for kj in range(KW):
            tap = ph[0, 0, (kj * dw) % sw, 0, (kj * dw) // sw:(kj * dw) // sw + OW]
            if kj == 0:
                for i in range(OW):
                    o[i] = tap[i]
            elif is_max:
                for i in range(OW):
                    o[i] = np.maximum(o[i], tap[i])
            else:
                for i in range(OW):
                    o[i] += tap[i]
        if not is_max:
            d = div[oh]
            for i in range(OW):
                o[i] = o[i] / d[i] if d[i] > 0 else 0


def _pool_body(x, y, div, KH, KW, sh, sw, dh, dw, pt, pl, is_max, pad):
    """_pool_channel over every channel of x (N, C, H, W) into y (N, C, OH, OW); the scratch rows
    are allocated once per block of channels."""
    N, C, H, W = x.shape
    OW = y.shape[3]
    Wq = OW + (KW - 1) * dw // sw
    blocks = min(N * C, 64)
    for blk in prange(blocks):
        vm = np.empty(W, y.dtype)
        ph = np.full((1, 1, sw, 1, Wq), pad, y.dtype)
        for nc in range(blk * N * C // blocks, (blk + 1) * N * C // blocks):
            n = nc // C
            c = nc - n * C
            _pool_channel(x[n, c], y[n, c], vm, ph, div, KH, KW, sh, sw, dh, dw, pt, pl, is_max, pad)


_pool = Twin(_pool_body)


def _pool_direct_body(x, y, div, KH, KW, sh, sw, dh, dw, pt, pl, is_max, pad):
    """_pool_body as plain window loops over the valid taps of each output, for pools so small
    that the row machinery costs more than the comparisons."""
    N, C, H, W = x.shape
    OH, OW = y.shape[2], y.shape[3]
    rlo, rhi = _tap_ranges(OH, H, KH, sh, dh, pt)
    clo, chi = _tap_ranges(OW, W, KW, sw, dw, pl)
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        xc = x[n, c]
        yc = y[n, c]
        for oh in range(OH):
            yr = yc[oh]
            for ow in range(OW):
                acc = pad
                for ki in range(rlo[oh], rhi[oh]):
                    xr = xc[oh * sh - pt + ki * dh]
                    for kj in range(clo[ow], chi[ow]):
                        v = xr[ow * sw - pl + kj * dw]
                        acc = np.maximum(acc, v) if is_max else acc + v
                if not is_max:
                    d = div[oh, ow]
                    acc = acc / d if d > 0 else 0
                yr[ow] = acc


_pool_direct = Twin(_pool_direct_body)


def _pool_tiled_body(x, y, KH, KW, is_max):
    """Windows that tile the image (stride = kernel, no padding or dilation, every window inside
    x): each output row is KH * KW strided passes over input rows, which LLVM vectorizes."""
    N, C = x.shape[0], x.shape[1]
    OH, OW = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for oh in range(OH):
            o = y[n, c, oh]
            for ki in range(KH):
                xr = x[n, c, oh * KH + ki]
                for kj in range(KW):
                    if ki == 0 and kj == 0:
                        for i in range(OW):
                            o[i] = xr[i * KW]
                    elif is_max:
                        for i in range(OW):
                            o[i] = np.maximum(o[i], xr[i * KW + kj])
                    else:
                        for i in range(OW):
                            o[i] += xr[i * KW + kj]
            if not is_max:
                d = KH * KW
                for i in range(OW):
                    o[i] /= d


_pool_tiled = Twin(_pool_tiled_body)


def _global_pool_body(x, y, is_max):
    """y[r] = mean or max of x[r, :] for a (rows, S) array. Four rows at a time: each row's sum
    is still one float64 chain in order, but four independent chains keep the adder busy where
    one waits on its own latency (128 rows of 64: 5.9 -> 2 us)."""
    R, S = x.shape
    for q in prange(-(-R // 4)):
        r0 = 4 * q
        if is_max:
            for r in range(r0, min(R, r0 + 4)):
                xr = x[r]
                m = xr[0]
                for s in range(1, S):
                    m = np.maximum(m, xr[s])
                y[r] = m
        elif r0 + 4 <= R:
            x0, x1, x2, x3 = x[r0], x[r0 + 1], x[r0 + 2], x[r0 + 3]
            a0 = a1 = a2 = a3 = 0.0
            for s in range(S):
                a0 += x0[s]
                a1 += x1[s]
                a2 += x2[s]
                a3 += x3[s]
            y[r0], y[r0 + 1], y[r0 + 2], y[r0 + 3] = a0 / S, a1 / S, a2 / S, a3 / S
        else:
            for r in range(r0, R):
                acc = 0.0
                for s in range(S):
                    acc += x[r, s]
                y[r] = acc / S


_global_pool = Twin(_global_pool_body)


class Pool(Kernel):
    n_outputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        if len(step.out_shapes) > 1:
            raise step.error("the Indices output of MaxPool is not supported")
        check_dtypes(step, [0], NUMBERS if step.op == "MaxPool" else FLOATS)
        if len(xs) not in (3, 4) or len(ys) != len(xs):
            raise step.error(f"only 1-D and 2-D pooling is supported, got shapes {list(xs)} -> {list(ys)}")
        k_sp = step.attr("kernel_shape")
        if not k_sp:
            raise step.error("kernel_shape is required")
        self.k, self.s, self.d, self.p = window_geometry(step, xs[2:], list(k_sp), ys[2:])
        self.x4, self.y4 = lift4(xs), lift4(ys)
        if self.x4[:2] != self.y4[:2] or len(xs) != len(ys):
            raise step.error(f"output shape {list(ys)} does not match input shape {list(xs)}")
        self._check_output()
        dt = np.dtype(step.in_dtypes[0])
        self.is_max = step.op == "MaxPool"
        self.pad = dt.type(0 if not self.is_max else np.finfo(dt).min if dt.kind == "f" else np.iinfo(dt).min)
        self.div = np.ones((1, 1), dt)
        self.include_pad = bool(step.attr("count_include_pad", 0))
        if not self.is_max:
            self.div = self._divisors(self.include_pad).astype(dt)
        self.work = math.prod(self.x4) * self.k[0] // self.s[0]
        self.tiled = self.k == self.s and self.d == (1, 1) and not any(self.p) and \
            self.y4[2] * self.k[0] <= self.x4[2] and self.y4[3] * self.k[1] <= self.x4[3]
        if self.tiled:
            self.fn = _pool_tiled
        elif math.prod(self.y4) * self.k[0] * self.k[1] < _TINY_WORK:
            self.fn = _pool_direct
        else:
            self.fn = _pool

    def _check_output(self) -> None:
        """The output size must be floor or ceil of the window count (ceil_mode); anything else
        would make the kernel read past its buffers."""
        for a in (0, 1):
            span = (self.k[a] - 1) * self.d[a] + 1
            room = self.x4[2 + a] + self.p[a] + self.p[a + 2] - span
            if room < 0 or self.y4[2 + a] not in (room // self.s[a] + 1, -(-room // self.s[a]) + 1):
                raise self.step.error(f"output shape {list(self.step.out_shapes[0])} does not match the pooling window")

    def _divisors(self, include_pad: bool) -> np.ndarray:
        """Per output position, the number of window taps inside the input (or, with
        count_include_pad, inside the padded input; taps past the padding never count)."""
        counts = []
        for axis in (0, 1):
            size, n_out = self.x4[2 + axis], self.y4[2 + axis]
            k, s, d = self.k[axis], self.s[axis], self.d[axis]
            begin, end = self.p[axis], self.p[axis + 2]
            lo, hi = (-begin, size + end) if include_pad else (0, size)
            taps = np.arange(n_out)[:, None] * s - begin + np.arange(k)[None, :] * d
            counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
        return np.outer(counts[0], counts[1])

    def emit(self, e, ins, outs):
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = self.k, self.s, self.d, self.p
        # literal loops: on a 64x112x112 MaxPool they beat the kernel 3.5x, and the kernel on two
        # threads 2x (benchmarks/bench_float_ops.py); split over the threads when large enough
        if fits(self.x4, self.y4, self.k, self.s, self.d, self.p):
            emit_pool(e, ins[0], outs[0], self.x4, self.y4, self.k, self.s, self.d, self.p, self.is_max,
                      self.include_pad, self.pad.dtype.name, e.lit(self.pad), task_threads(self.work, e.threads))
            return
        x, y = Expr(f"{ins[0]}.reshape({e.lit(self.x4)})"), Expr(f"{outs[0]}.reshape({e.lit(self.y4)})")
        if self.tiled:
            e.call(self.fn, x, y, kh, kw, self.is_max, work=self.work)
        else:
            e.call(self.fn, x, y, self.div, kh, kw, sh, sw, dh, dw, pt, pl, self.is_max, self.pad, work=self.work)

    def run(self, ins, outs, scratch):
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = self.k, self.s, self.d, self.p
        if self.tiled:
            self.fn(self.work, ins[0].reshape(self.x4), outs[0].reshape(self.y4), kh, kw, self.is_max)
            return
        self.fn(self.work, ins[0].reshape(self.x4), outs[0].reshape(self.y4), self.div, kh, kw, sh, sw, dh, dw, pt, pl,
                self.is_max, self.pad)


register("MaxPool", "AveragePool")(Pool)


@register("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        xs = step.in_shapes[0]
        if len(xs) < 3:
            raise step.error(f"expects an input with spatial axes, got shape {xs}")
        check_dtypes(step, [0], FLOATS)
        self.rows = xs[0] * xs[1]
        self.is_max = step.op == "GlobalMaxPool"
        if tuple(step.out_shapes[0]) != tuple(xs[:2]) + (1,) * (len(xs) - 2):
            raise step.error(f"output shape {list(step.out_shapes[0])} does not match input shape {list(xs)}")
        self.work = math.prod(xs)

    def emit(self, e, ins, outs):
        e.call(_global_pool, Expr(f"{ins[0]}.reshape(({self.rows}, -1))"), Expr(f"{outs[0]}.reshape(-1)"), self.is_max,
               work=self.work)

    def run(self, ins, outs, scratch):
        _global_pool(self.work, ins[0].reshape(self.rows, -1), outs[0].reshape(-1), self.is_max)
