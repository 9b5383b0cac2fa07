"""Float convolution, Conv and bnnc.FusedConv: NCHW, 1-D or 2-D, any stride, dilation, padding and
groups, bias and fused activation.

Geometry: stride phases. The zero-padded image is split into sh * sw phase planes
(``_phase_split``): plane (pr, pc) of channel c holds padded x[c, a*sh + pr, b*sw + pc] at (a, b),
Hq x Wq with Wq = OW + (KW-1)*dw // sw. Tap (ki, kj) then reads, for every output (oh, ow), plane
((ki*dh) % sh, (kj*dw) % sw) at (oh + (ki*dh) // sh, ow + (kj*dw) // sw): one uniform shift of
the flattened plane. So over a band of output rows computed Wq wide (the columns past OW are
discarded), every tap is one contiguous run of memory, whatever the stride.

Three paths:

* register tiles (runtime/kernels/conv_tiles.py; float32, one group, where the best of their
  three layouts wastes at most ``_TILE_WASTE``): blocks of output channels x positions
  accumulated in vector registers over every tap, bias and Relu added there, stored straight
  into y; no patch matrix. Stems, first layers, 3x3 and strided 1x1 convs take it (measured in
  benchmarks/bench_float_conv.py: 1.0x onnxruntime on the Bi-Real Net stem where im2col + BLAS
  gave 0.68x; 8x8 planes of a binary-weight network 0.75x -> 0.9x with channels in the
  vectors). Pointwise stride-1 unpadded convs take tiles of their own that read x in place
  (runtime/kernels/conv_pointwise.py; Bi-Real Net's 1x1 shortcuts 0.82-0.91x -> about 1.0-1.1x)
  when a plane holds a whole vector, else BLAS, which reads their input in place too.
* GEMM (runtime/kernels/conv_gemm.py): bands of output positions, each a patch matrix built
  straight from the input times the weights through BLAS (runtime/blas.py), bias and activation
  added while the band is in cache; bands are spread over the session's threads.
* direct (depthwise and narrow groups, where per-group GEMMs would be tiny): per output plane,
  each tap is one long multiply-add over the flattened phase plane, three taps per pass; the
  phase split of a group's channels is done by the thread that convolves them, while in cache.
  Tiny layers (planes of a few pixels) run as plain scalar loops instead.

The session runs every path from its plan function (``emit``: every size a literal, the
scratch arrays in the workspace) or step by step (``run``: the same compiled code).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, Kernel, Step, Twin, check_dtypes, check_scratch, register
from runtime.kernels.conv_gemm import WIDE, GemmPlan, bias_act, conv_gemm, phase_split, workers
from runtime.kernels.conv_pointwise import PointwisePlan
from runtime.kernels.conv_tiles import TilePlan
from runtime.kernels.nn import act_rows, activation_of, lift4, window_geometry
from runtime.threads import current_threads

_SPLIT_MACS = 1 << 22  # below this many multiply-adds a conv runs in one thread
_TINY_PLANE = 16  # a direct conv with at most this many output pixels runs as plain scalar loops
_TILE_WASTE = 0.15  # register tiles when they throw away at most this fraction of their work
_TILE_KINDS = ("wide", "panel", "channels")  # the register tiles' layouts conv.py chooses from
_phase_split = phase_split  # the name pool.py imports


def _conv_direct_body(x, xq, wide, w, bias, y, pt, pl, dh, dw, kind, a0, a1):
    """Direct grouped convolution: x (N, C, H, W), its phase split xq (N, C, sh, sw, Hq, Wq),
    w (M, C/g, KH, KW), y (N, M, OH, OW), wide (N, M, OH*Wq) scratch."""
    N, C = x.shape[0], x.shape[1]
    M, Cg, KH, KW = w.shape
    sh, sw, Hq, Wq = xq.shape[2], xq.shape[3], xq.shape[4], xq.shape[5]
    OH, OW = y.shape[2], y.shape[3]
    G = C // Cg
    Mg = M // G
    L = (OH - 1) * Wq + OW
    KK = KH * KW
    wf = w.reshape(M, Cg * KK)
    offs = np.empty(KK, np.int64)  # where tap (ki, kj) starts in a channel's flattened phases
    for ki in range(KH):
        for kj in range(KW):
            plane = ((ki * dh) % sh) * sw + (kj * dw) % sw
            offs[ki * KW + kj] = (plane * Hq + (ki * dh) // sh) * Wq + (kj * dw) // sw
    for ng in prange(N * G):
        n = ng // G
        g = ng - n * G
        phase_split(x[n, g * Cg:(g + 1) * Cg], xq[n, g * Cg:(g + 1) * Cg], pt, pl)
        for m in range(g * Mg, (g + 1) * Mg):
            acc = wide[n, m]
            b = bias[m]
            for i in range(L):
                acc[i] = b
            for c in range(Cg):
                xf = xq[n, g * Cg + c].reshape(sh * sw * Hq * Wq)
                wr = wf[m, c * KK:]
                t = 0
                while t + 3 <= KK:
                    s0 = xf[offs[t]:]
                    s1 = xf[offs[t + 1]:]
                    s2 = xf[offs[t + 2]:]
                    w0, w1, w2 = wr[t], wr[t + 1], wr[t + 2]
                    for i in range(L):
                        acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
                    t += 3
                while t < KK:
                    s0 = xf[offs[t]:]
                    w0 = wr[t]
                    for i in range(L):
                        acc[i] += w0 * s0[i]
                    t += 1
            for oh in range(OH):
                bias_act(acc[oh * Wq:oh * Wq + OW], y[n, m, oh], 0, kind, a0, a1)


_conv_direct = Twin(_conv_direct_body)


@njit(cache=True, nogil=True)
def _tap_ranges(n_out, size, k, s, d, p):
    """lo[o], hi[o]: the taps lo <= t < hi of output o whose input o*s - p + t*d is in [0, size)."""
    lo = np.zeros(n_out, np.int64)
    hi = np.zeros(n_out, np.int64)
    for o in range(n_out):
        for t in range(k):
            i = o * s - p + t * d
            if i < 0:
                lo[o] = t + 1
            elif i < size:
                hi[o] = t + 1
        hi[o] = max(hi[o], lo[o])
    return lo, hi


@njit(cache=True, nogil=True)
def _conv_tiny(x, w, bias, y, sh, sw, dh, dw, pt, pl, kind, a0, a1):
    """Direct grouped convolution in scalar loops, for output planes of a few pixels, where the
    phase split and the per-row loops of _conv_direct cost more than the arithmetic."""
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    OH, OW = y.shape[2], y.shape[3]
    Mg = M // (C // Cg)
    rlo, rhi = _tap_ranges(OH, H, KH, sh, dh, pt)
    clo, chi = _tap_ranges(OW, W, KW, sw, dw, pl)
    for n in range(N):
        for m in range(M):
            c0 = (m // Mg) * Cg
            for oh in range(OH):
                for ow in range(OW):
                    acc = bias[m]
                    for c in range(Cg):
                        for ki in range(rlo[oh], rhi[oh]):
                            ih = oh * sh - pt + ki * dh
                            for kj in range(clo[ow], chi[ow]):
                                acc += w[m, c, ki, kj] * x[n, c0 + c, ih, ow * sw - pl + kj * dw]
                    y[n, m, oh, ow] = acc
            if kind != 0:
                o = y[n, m].reshape(OH * OW)
                act_rows(o, o, kind, a0, a1)


@njit(cache=True, nogil=True)
def _conv_tiny_depthwise(x, wt, bias, y, kh, kw, sh, sw, dh, dw, pt, pl, kind, a0, a1):
    """``_conv_tiny`` for one input channel per group (depthwise, Mg outputs per channel) with
    the output channels in the vectors: x copied channel-last (xt [H * W, M], each channel once
    per output it feeds), every in-bounds tap one multiply-add over the M channels with the
    weights wt [kh * kw, M]; the outputs' M-vectors [OH * OW, M] copied back to NCHW. QuickNet's
    depthwise 32 x 7x7 -> 4x4 took 10 us in scalar loops, 3.6 us so."""
    N, C, H, W = x.shape
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Mg = M // C
    xt = np.empty((H * W, M), x.dtype)
    acc = np.empty(M, x.dtype)
    out = np.empty((OH * OW, M), x.dtype)
    for n in range(N):
        for c in range(C):
            xc = x[n, c].reshape(H * W)
            for p in range(H * W):
                for j in range(Mg):
                    xt[p, c * Mg + j] = xc[p]
        for oh in range(OH):
            for ow in range(OW):
                acc[:] = bias
                for ki in range(kh):
                    ih = oh * sh - pt + ki * dh
                    if ih < 0 or ih >= H:
                        continue
                    for kj in range(kw):
                        iw = ow * sw - pl + kj * dw
                        if iw < 0 or iw >= W:
                            continue
                        xr = xt[ih * W + iw]
                        wr = wt[ki * kw + kj]
                        for m in range(M):
                            acc[m] += wr[m] * xr[m]
                out[oh * OW + ow] = acc
        for m in range(M):
            ym = y[n, m].reshape(OH * OW)
            for q in range(OH * OW):
                ym[q] = out[q, m]
            if kind != 0:
                act_rows(ym, ym, kind, a0, a1)


# -- kernel --------------------------------------------------------------------------------------
@register("Conv", "bnnc.FusedConv")
class Conv(Kernel):
    """NCHW convolution, 1-D or 2-D, any groups; see the module docstring for the strategy."""

    n_inputs = (2, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0, 1, 2], FLOATS)
        ws = step.in_shapes[1]
        act = activation_of(step) if step.op == "bnnc.FusedConv" else (0, 0.0, 0.0)
        self._plan(ws, int(step.attr("group", 1)), act)
        bias = step.in_shapes[2] if len(step.in_shapes) > 2 else None
        if bias is not None and math.prod(bias) != self.w4[0]:
            raise step.error(f"bias has shape {list(bias)}, expected [{self.w4[0]}]")
        consts = list(step.consts) + [None]
        self.has_bias = bias is not None
        self.const = consts[1] is not None and (consts[2] is not None or not self.has_bias)
        if not self.const:  # the tiles' weights are packed once
            self.tiles = None
        self.params = self._params(consts[1], consts[2]) if self.const else None

    def _plan(self, ws, g: int, act: tuple[int, float, float]) -> None:
        """Check the geometry of input, weights ``ws`` [M, C/g, k...] and output, and choose the
        path."""
        step = self.step
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        if xs is None or ws is None or len(xs) not in (3, 4) or len(ws) != len(xs):
            raise step.error(f"expects 1-D or 2-D NCHW input and weights, got shapes {xs} and {ws}")
        self.act = act
        k_sp = list(step.attr("kernel_shape") or ws[2:])
        (kh, kw), self.strides, self.dil, self.pads = window_geometry(step, xs[2:], k_sp, ys[2:])
        self.x4, self.y4 = lift4(xs), lift4(ys)
        n, c, h, w = self.x4
        m, cg = ws[0], ws[1]
        if c != cg * g or m % g or list(ws[2:]) != k_sp:
            raise step.error(f"input has {c} channels; weights {list(ws)} do not fit group={g}")
        want = [n, m]
        for a, k in enumerate((kh, kw)):
            span = (k - 1) * self.dil[a] + 1
            want.append((self.x4[2 + a] + self.pads[a] + self.pads[a + 2] - span) // self.strides[a] + 1)
        if list(self.y4) != want or min(want) < 1:
            raise step.error(f"output shape {list(ys)} does not match the convolution")
        self.w4 = (m, cg, kh, kw)
        self.groups, self.cg, self.mg = g, cg, m // g
        self.k = cg * kh * kw
        self.dtype = np.dtype(step.out_dtypes[0])
        self.macs = n * m * self.y4[2] * self.y4[3] * cg * kh * kw
        # narrow groups make tiny GEMMs: a direct loop is faster there
        self.direct = g > 1 and cg * self.mg <= 256
        self.tiny = self.direct and self.y4[2] * self.y4[3] <= _TINY_PLANE
        self.geo = (*self.y4[2:], kh, kw, *self.strides, *self.dil, *self.pads[:2])
        self.tiles = self._tile_plan()
        if self.direct and not self.tiny:
            check_scratch(step, self._phase_shape(), self.dtype)
        elif not self.direct:  # the phase-split image does not depend on the thread count
            check_scratch(step, self._gemm_plan(1).xq_shape, self.dtype)

    @property
    def depthwise(self) -> bool:
        """A tiny depthwise conv with constant weights, transposed once (``_conv_tiny_depthwise``)."""
        return self.tiny and self.cg == 1 and self.const

    def _tile_plan(self) -> TilePlan | PointwisePlan | None:
        """Register tiles for one float32 group (runtime/kernels/conv_tiles.py); an unpadded 1x1
        conv with stride 1 takes the pointwise tiles reading x in place (conv_pointwise.py; 16x16
        planes, 128 -> 128 channels, batch 8: 1.2x onnxruntime where BLAS gave 0.8x) when its planes
        hold a whole vector, else BLAS, which reads its input in place too."""
        if self.groups != 1 or self.dtype != np.float32:
            return None
        if self.w4[2:] == (1, 1) and self.strides == (1, 1) and not any(self.pads):
            return PointwisePlan.of(self.x4, self.y4, _SPLIT_MACS)
        wq = self.y4[3] if self.w4[2:] == (1, 1) else self._phase_shape()[5]
        return TilePlan.choose(self.x4, self.y4, self.w4, self.strides, self.dil, self.pads, wq, _TILE_KINDS,
                               _TILE_WASTE, _SPLIT_MACS)

    def _params(self, w: np.ndarray, b: np.ndarray | None):
        """Weights (direct: [M, Cg, kh, kw]; GEMM: [M, K]) and the bias [M] (zeros when absent)."""
        m = self.w4[0]
        w = np.asarray(w, dtype=self.dtype).reshape(self.w4)
        b = np.zeros(m, self.dtype) if b is None else np.asarray(b, dtype=self.dtype).reshape(m)
        if self.tiles is not None:
            return self.tiles.pack(w.reshape(m, -1), b)
        if self.depthwise:
            return np.ascontiguousarray(w.reshape(m, -1).T), b
        return np.ascontiguousarray(w if self.direct else w.reshape(m, -1)), np.ascontiguousarray(b)

    def _phase_shape(self) -> tuple[int, ...]:
        """The zero-padded phase-split image (N, C, sh, sw, Hq, Wq) of the direct path; its
        padding is written once, when it is made (_phase_split writes only the interior)."""
        (kh, kw), (sh, sw), (dh, dw) = self.w4[2:], self.strides, self.dil
        oh, ow = self.y4[2:]
        return (*self.x4[:2], sh, sw, oh + (kh - 1) * dh // sh, ow + (kw - 1) * dw // sw)

    def _wide_shape(self) -> tuple[int, int, int]:
        """The direct path's output rows computed Wq wide, (N, M, OH * Wq)."""
        return self.y4[0], self.y4[1], self.y4[2] * self._phase_shape()[5]

    def _gemm_plan(self, threads: int) -> GemmPlan:
        t = workers(self.macs, threads, _SPLIT_MACS)
        return GemmPlan.of(self.x4, self.y4, self.w4, self.strides, self.dil, self.pads, self.groups, t)

    def emit(self, e, ins, outs):
        x, y = Expr(f"{ins[0]}.reshape({e.lit(self.x4)})"), Expr(f"{outs[0]}.reshape({e.lit(self.y4)})")
        w, b = self.params if self.const else self._emit_params(e, ins)
        kind, a0, a1 = self.act
        (dh, dw), (pt, pl) = self.dil, self.pads[:2]
        if self.tiles is not None:
            self.tiles.emit(e, ins[0], outs[0], w, b, self.act)
        elif self.depthwise:
            e.call(_conv_tiny_depthwise, x, w, b, y, *self.w4[2:], *self.strides, dh, dw, pt, pl, kind, a0, a1)
        elif self.tiny:
            e.call(_conv_tiny, x, w, b, y, *self.strides, dh, dw, pt, pl, kind, a0, a1)
        elif self.direct:
            xq = e.work(self._phase_shape(), self.dtype, "xq", zeroed=True)
            wide = e.work(self._wide_shape(), self.dtype, "wide")
            e.call(_conv_direct, x, xq, wide, w, b, y, pt, pl, dh, dw, kind, a0, a1, work=self.macs)
        else:
            gp = self._gemm_plan(e.threads)
            xq = e.work(gp.xq_shape, self.dtype, "xq", zeroed=True)
            col = e.work(gp.col_shape, self.dtype, "col", zeroed=gp.mode == WIDE)
            yw = e.work(gp.yw_shape, self.dtype, "yw")
            e.call(conv_gemm, x, xq, w, b, y, col, yw, gp.bands, self.geo, gp.mode, kind, a0, a1,
                   work=self.macs if gp.threads > 1 else 0)

    def _emit_params(self, e, ins) -> tuple:
        """Weights and bias read from the step's inputs where they are not constants."""
        m = self.w4[0]
        consts = list(self.step.consts) + [None]
        w_shape = self.w4 if self.direct else (m, self.k)
        if consts[1] is not None:
            w = self._params(consts[1], None)[0]
        else:
            w = Expr(f"{ins[1]}.reshape({e.lit(w_shape)})")
        if not self.has_bias:
            b = np.zeros(m, self.dtype)
        elif consts[2] is not None:
            b = np.ascontiguousarray(consts[2], dtype=self.dtype).reshape(m)
        else:
            b = Expr(f"{ins[2]}.reshape(({m},))")
        return w, b

    def make_scratch(self) -> dict:
        """The direct path's phase-split image and wide rows; the GEMM path's patch matrices and
        result blocks are made per thread count, on first use (``run``)."""
        if self.tiles is not None:
            return self.tiles.make_scratch()
        if not self.direct or self.tiny:
            return {}
        return {"xq": np.zeros(self._phase_shape(), self.dtype), "wide": np.empty(self._wide_shape(), self.dtype)}

    def run(self, ins, outs, scratch):
        x = ins[0].reshape(self.x4)
        y = outs[0].reshape(self.y4)
        w, b = self.params if self.const else self._params(ins[1], ins[2] if self.has_bias else None)
        kind, a0, a1 = self.act
        (dh, dw), (pt, pl) = self.dil, self.pads[:2]
        if self.tiles is not None:
            self.tiles.run(ins[0], outs[0], w, b, self.act, scratch)
        elif self.depthwise:
            _conv_tiny_depthwise(x, w, b, y, *self.w4[2:], *self.strides, dh, dw, pt, pl, kind, a0, a1)
        elif self.tiny:
            _conv_tiny(x, w, b, y, self.strides[0], self.strides[1], dh, dw, pt, pl, kind, a0, a1)
        elif self.direct:
            _conv_direct(self.macs, x, scratch["xq"], scratch["wide"], w, b, y, pt, pl, dh, dw, kind, a0, a1)
        else:
            gp = self._gemm_plan(current_threads())
            if gp.threads not in scratch:  # the workspace's scratch for this thread count
                scratch[gp.threads] = tuple(np.zeros(s, self.dtype) for s in (gp.xq_shape, gp.col_shape, gp.yw_shape))
            xq, col, yw = scratch[gp.threads]
            conv_gemm(self.macs if gp.threads > 1 else 0, x, xq, w, b, y, col, yw, gp.bands, self.geo, gp.mode, kind,
                      a0, a1)
