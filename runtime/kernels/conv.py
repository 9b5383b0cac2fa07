"""Float convolution, Conv and bnnc.FusedConv: NCHW, 1-D or 2-D, any stride, dilation, padding and
groups, bias and fused activation.

Geometry: stride phases. The zero-padded image is split into sh * sw phase planes
(``_phase_split``): plane (pr, pc) of channel c holds padded x[c, a*sh + pr, b*sw + pc] at (a, b),
Hq x Wq with Wq = OW + (KW-1)*dw // sw. Tap (ki, kj) then reads, for every output (oh, ow), plane
((ki*dh) % sh, (kj*dw) % sw) at (oh + (ki*dh) // sh, ow + (kj*dw) // sw): one uniform shift of
the flattened plane. So over a band of output rows computed Wq wide (the columns past OW are
discarded), every tap is one contiguous run of memory, whatever the stride.

Two paths:

* GEMM: the patch matrix col[K, rows*Wq] of a band of output rows (K = C/g * KH * KW, rows in
  the (c, ki, kj) order of the flattened weight) is K contiguous copies, and W[M, K] @ col goes
  to a scratch that is cropped into the output with bias and activation while still in cache.
  Where the wide rows would waste much work (small images), the band is built OW wide instead,
  one copy per output row, and the GEMM writes straight into the output. A pointwise conv (1x1,
  stride 1, no padding) needs no copy: the input is the patch matrix. Bands are about 512 KB;
  with several threads they are spread over worker threads (runtime.threads.run_parts), each
  GEMM single-threaded.
* direct (depthwise and narrow groups, where per-group GEMMs would be tiny): per output plane,
  each tap is one long multiply-add over the flattened phase plane, three taps per pass; the
  phase split of a group's channels is done by the thread that convolves them, while in cache.
  Tiny layers (planes of a few pixels) run as plain scalar loops instead.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Kernel, Step, Twin, register
from runtime.kernels.nn import act_rows, activation_of, lift4, window_geometry
from runtime.threads import current_threads, max_threads, run_parts

_BAND_BYTES = 1 << 19  # target size of one band of the patch matrix (stays in L2 with the GEMM)
_MIN_COLS = 256  # but at least this many columns per band, for GEMM efficiency
_SPLIT_MACS = 1 << 22  # below this many multiply-adds a conv runs in one thread
_TINY_PLANE = 16  # a direct conv with at most this many output pixels runs as plain scalar loops
_MAX_WASTE = 0.15  # build bands Wq wide when that adds at most this fraction of work


@njit(cache=True, nogil=True)
def _phase_split(x, xq, pt, pl):
    """xq[c, pr, pc, a, b] = x[c, a*sh + pr - pt, b*sw + pc - pl] wherever that is inside x, for
    one image x (C, H, W) and xq (C, sh, sw, Hq, Wq). Only those positions are written: the rest
    (the padding) keeps the value the buffer was allocated with. Constant-stride loops for strides
    1, 2 and 4 let LLVM vectorize the gathers."""
    C, H, W = x.shape
    sh, sw, Hq, Wq = xq.shape[1], xq.shape[2], xq.shape[3], xq.shape[4]
    for c in range(C):
        for h in range(H):
            a = (h + pt) // sh
            if a >= Hq:
                break
            xr = x[c, h]
            for pc in range(sw):
                w0 = (pc - pl) % sw
                b0 = (w0 + pl) // sw
                cnt = min((W - w0 + sw - 1) // sw, Wq - b0)
                dst = xq[c, h + pt - a * sh, pc, a, b0:]
                src = xr[w0:]
                if sw == 1:
                    for t in range(cnt):
                        dst[t] = src[t]
                elif sw == 2:
                    for t in range(cnt):
                        dst[t] = src[2 * t]
                elif sw == 4:
                    for t in range(cnt):
                        dst[t] = src[4 * t]
                else:
                    for t in range(cnt):
                        dst[t] = src[t * sw]


@njit(cache=True, nogil=True)
def _im2col(xq, c0, col, KH, KW, dh, dw, r0, r1, OW):
    """col[(c, ki, kj), (oh - r0) * wc + ow] = tap (ki, kj) of channel c0 + c at output (oh, ow),
    for the band r0 <= oh < r1 of the phase-split image xq (C, sh, sw, Hq, Wq). ``wc`` (the band's
    row width, col.shape[1] // (r1 - r0)) is Wq (one copy per row of col; the last run is cut at
    the plane's end, in columns that are discarded) or OW (one copy per output row)."""
    sh, sw, Hq, Wq = xq.shape[1], xq.shape[2], xq.shape[3], xq.shape[4]
    kk = KH * KW
    wc = col.shape[1] // (r1 - r0)
    for r in range(col.shape[0]):
        c = r // kk
        ki = (r - c * kk) // KW
        kj = r - c * kk - ki * KW
        plane = xq[c0 + c, (ki * dh) % sh, (kj * dw) % sw].reshape(Hq * Wq)
        start = (r0 + (ki * dh) // sh) * Wq + (kj * dw) // sw
        dst = col[r]
        if wc == Wq:
            src = plane[start:]
            for i in range(min(col.shape[1], Hq * Wq - start)):
                dst[i] = src[i]
        else:
            for j in range(r1 - r0):
                d = dst[j * OW:]
                src = plane[start + j * Wq:]
                for i in range(OW):
                    d[i] = src[i]


@njit(cache=True, nogil=True)
def _bias_act(src, dst, b, kind, a0, a1):
    """dst[i] = act(src[i] + b) over 1-D arrays (src may be dst); Relu is fused into the add, the
    other activations run as a second pass while the row is in cache."""
    n = dst.shape[0]
    if kind == 1:
        for i in range(n):
            v = src[i] + b
            dst[i] = v if v > 0 else 0
    else:
        for i in range(n):
            dst[i] = src[i] + b
        if kind != 0:
            act_rows(dst, dst, kind, a0, a1)


@njit(cache=True, nogil=True)
def _crop(yw, y, bias, m0, r0, r1, kind, a0, a1):
    """y[m0 + m, oh, :] = act(yw[m, (oh - r0) * wc : ... + OW] + bias[m0 + m]) for r0 <= oh < r1:
    the GEMM result of a band (rows of width wc >= OW) into the (M, OH, OW) output. With
    wc == OW, yw may be the output band itself (the GEMM wrote there), finished in place."""
    OW = y.shape[2]
    wc = yw.shape[1] // (r1 - r0)
    for m in range(yw.shape[0]):
        b = bias[m0 + m]
        if wc == OW:
            _bias_act(yw[m], y[m0 + m, r0:r1].reshape((r1 - r0) * OW), b, kind, a0, a1)
            continue
        for oh in range(r0, r1):
            _bias_act(yw[m, (oh - r0) * wc:(oh - r0) * wc + OW], y[m0 + m, oh], b, kind, a0, a1)


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
        _phase_split(x[n, g * Cg:(g + 1) * Cg], xq[n, g * Cg:(g + 1) * Cg], pt, pl)
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
                _bias_act(acc[oh * Wq:oh * Wq + OW], y[n, m, oh], 0, kind, a0, a1)


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


# -- kernel --------------------------------------------------------------------------------------
@register("Conv", "bnnc.FusedConv")
class Conv(Kernel):
    """NCHW convolution, 1-D or 2-D, any groups; see the module docstring for the strategy."""

    def __init__(self, step: Step):
        super().__init__(step)
        ws = step.in_shapes[1]
        act = activation_of(step) if step.op == "bnnc.FusedConv" else (0, 0.0, 0.0)
        self._plan(ws, int(step.attr("group", 1)), act)
        bias = step.in_shapes[2] if len(step.in_shapes) > 2 else None
        if bias is not None and math.prod(bias) != self.w4[0]:
            raise step.error(f"bias has shape {list(bias)}, expected [{self.w4[0]}]")
        consts = list(step.consts) + [None]
        self.has_bias = bias is not None
        self.const = consts[1] is not None and (consts[2] is not None or not self.has_bias)
        self.params = self._params(consts[1], consts[2]) if self.const else None

    def _plan(self, ws, g: int, act: tuple[int, float, float]) -> None:
        """Check the geometry of input, weights ``ws`` [M, C/g, k...] and output, and plan the
        path and its buffers."""
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
        self.dtype = np.dtype(step.out_dtypes[0])
        self.macs = n * m * self.y4[2] * self.y4[3] * cg * kh * kw
        # narrow groups make tiny GEMMs: a direct loop is faster there
        self.direct = g > 1 and cg * self.mg <= 256
        self.pointwise = (kh, kw) == (1, 1) and self.strides == (1, 1) and not any(self.pads)
        self.phased = not self.pointwise or self.direct
        self.wq = self.y4[3] + (kw - 1) * self.dil[1] // self.strides[1]  # phase plane width
        if self.direct:
            self.tiny = self.y4[2] * self.y4[3] <= _TINY_PLANE
        else:
            self._plan_gemm()

    def _params(self, w: np.ndarray, b: np.ndarray | None):
        """Weights (direct: [M, Cg, kh, kw]; GEMM: [M, K]) and the bias [M] (zeros when absent)."""
        m = self.w4[0]
        w = np.asarray(w, dtype=self.dtype).reshape(self.w4)
        b = np.zeros(m, self.dtype) if b is None else np.asarray(b, dtype=self.dtype).reshape(m)
        return np.ascontiguousarray(w if self.direct else w.reshape(m, -1)), np.ascontiguousarray(b)

    def make_scratch(self) -> dict:
        """The phase-split image ("xq"), the direct path's wide output rows ("wide"), and each GEMM
        worker's patch matrix and output band (made on its first part, see _worker_scratch)."""
        sc: dict = {"xq": self._phase_buffer() if self.phased else None, "workers": {}}
        if self.direct:
            sc["wide"] = np.empty((self.y4[0], self.y4[1], self.y4[2] * self.wq), self.dtype)
        return sc

    def _phase_buffer(self) -> np.ndarray:
        """The zero-padded phase-split image (N, C, sh, sw, Hq, Wq); its padding is written here,
        once (_phase_split writes only the interior)."""
        n, c = self.x4[:2]
        oh, ow = self.y4[2:]
        (kh, kw), (sh, sw), (dh, dw) = self.w4[2:], self.strides, self.dil
        hq, wq = oh + (kh - 1) * dh // sh, ow + (kw - 1) * dw // sw
        return np.zeros((n, c, sh, sw, hq, wq), self.dtype)

    def _plan_gemm(self) -> None:
        n, m, oh, ow = self.y4
        wq = ow if self.pointwise else self.wq
        self.wc = wq if wq <= ow * (1 + _MAX_WASTE) else ow  # see _im2col
        self.k = self.cg * self.w4[2] * self.w4[3]
        rows = max(_BAND_BYTES // (self.dtype.itemsize * self.k * self.wc), -(-_MIN_COLS // self.wc), 1)
        workers = max_threads() if self.macs >= _SPLIT_MACS else 1
        rows = min(rows, -(-oh // workers))  # at least one band per worker
        self.bands = [(r0, min(oh, r0 + rows)) for r0 in range(0, oh, rows)]
        self.parts = [(i, g, band) for i in range(n) for g in range(self.groups) for band in self.bands]
        self.threaded = workers > 1

    def _worker_scratch(self, workers: dict, worker: int) -> tuple[np.ndarray | None, np.ndarray]:
        """One worker's patch matrix and GEMM output buffers (zeroed: _im2col may leave the
        discarded tail of the last band unwritten, and garbage there could be a slow denormal)."""
        if worker not in workers:
            cols = (self.bands[0][1] - self.bands[0][0]) * self.wc
            col = None if self.pointwise else np.zeros(self.k * cols, self.dtype)
            yw = np.zeros(self.mg * cols if self.wc != self.y4[3] else 0, self.dtype)
            workers[worker] = (col, yw)
        return workers[worker]

    def run(self, ins, outs, scratch):
        x = ins[0].reshape(self.x4)
        y = outs[0].reshape(self.y4)
        w, b = self.params if self.const else self._params(ins[1], ins[2] if self.has_bias else None)
        kind, a0, a1 = self.act
        (dh, dw), (pt, pl) = self.dil, self.pads[:2]
        if self.direct and self.tiny:
            _conv_tiny(x, w, b, y, self.strides[0], self.strides[1], dh, dw, pt, pl, kind, a0, a1)
            return
        if self.direct:
            _conv_direct(self.macs, x, scratch["xq"], scratch["wide"], w, b, y, pt, pl, dh, dw, kind, a0, a1)
            return
        xq = scratch["xq"]
        if not self.pointwise:
            for i in range(self.x4[0]):
                _phase_split(x[i], xq[i], pt, pl)
        x2 = x.reshape(self.x4[0], self.x4[1], -1)

        def part(p: int, worker: int) -> None:
            i, g, (r0, r1) = self.parts[p]
            col, yw = self._worker_scratch(scratch["workers"], worker)
            cols = (r1 - r0) * self.wc
            if self.pointwise:
                src = x2[i, g * self.cg:(g + 1) * self.cg, r0 * self.wc:r1 * self.wc]
            else:
                src = col[:self.k * cols].reshape(self.k, cols)
                _im2col(xq[i], g * self.cg, src, self.w4[2], self.w4[3], dh, dw, r0, r1, self.y4[3])
            if self.wc == self.y4[3]:  # straight into the output band, finished in place
                out = y[i, g * self.mg:(g + 1) * self.mg].reshape(self.mg, -1)[:, r0 * self.wc:r1 * self.wc]
            else:
                out = yw[:self.mg * cols].reshape(self.mg, cols)
            np.matmul(w[g * self.mg:(g + 1) * self.mg], src, out=out)
            _crop(out, y[i], b, g * self.mg, r0, r1, kind, a0, a1)

        run_parts(part, len(self.parts), current_threads() if self.threaded else 1)
