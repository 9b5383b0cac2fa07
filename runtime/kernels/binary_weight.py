"""bnnc.BinaryWeightConv, bnnc.BinaryWeightDense: float input, binary (or ternary) weights.

``y = conv(x, W) * scale[c] + bias[c]`` (zero padding, as ONNX Conv) and ``y = x @ W.T * scale +
bias`` with W in {-1, 0, +1}. ``__init__`` unpacks the weight bitstream (runtime/bitpack.py) to
float32 once; a run is im2col (a threaded Numba kernel into a scratch buffer allocated once) and
one BLAS GEMM per image and group, or, for grouped convolutions with tiny per-group reductions
(depthwise), a direct threaded loop. The scale and bias pass follows over the output.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Kernel, Step, register
from runtime.kernels.binary_common import check_input, check_outputs, const_input, weight_values, window_attrs


@njit(cache=True, parallel=True)
def _im2col(x, n, c0, geom, col):
    """col[(c * kh + i) * kw + j, oh * OW + ow] = x[n, c0 + c, ih, iw], 0 outside the image."""
    kh_, kw_, sh, sw, dh, dw, pt, pl, oh_, ow_ = geom
    h_, w_ = x.shape[2], x.shape[3]
    for r in prange(col.shape[0]):
        j = r % kw_
        i = (r // kw_) % kh_
        c = r // (kw_ * kh_)
        cr = col[r]
        xc = x[n, c0 + c]
        for oh in range(oh_):
            ih = oh * sh - pt + i * dh
            base = oh * ow_
            if ih < 0 or ih >= h_:
                cr[base:base + ow_] = 0
                continue
            for ow in range(ow_):
                iw = ow * sw - pl + j * dw
                cr[base + ow] = xc[ih, iw] if 0 <= iw < w_ else np.float32(0)


@njit(cache=True, parallel=True)
def _direct_conv(x, wf, geom, y):
    """Grouped convolution straight from x: wf [Cout, Cin_g, kh, kw] float32, y [N, Cout, OH, OW]."""
    kh_, kw_, sh, sw, dh, dw, pt, pl, oh_, ow_ = geom
    n_, cout = y.shape[0], y.shape[1]
    cg = wf.shape[1]
    og = cout // (x.shape[1] // cg)
    h_, w_ = x.shape[2], x.shape[3]
    for r in prange(n_ * cout):
        n = r // cout
        oc = r % cout
        c0 = (oc // og) * cg
        yo = y[n, oc]
        yo[:] = 0
        for c in range(cg):
            xc = x[n, c0 + c]
            for i in range(kh_):
                for j in range(kw_):
                    wv = wf[oc, c, i, j]
                    if wv == 0:
                        continue
                    for oh in range(oh_):
                        ih = oh * sh - pt + i * dh
                        if ih < 0 or ih >= h_:
                            continue
                        for ow in range(ow_):
                            iw = ow * sw - pl + j * dw
                            if 0 <= iw < w_:
                                yo[oh, ow] += wv * xc[ih, iw]


@njit(cache=True, parallel=True)
def _scale_bias(y, scale, bias):
    """y[n, c, :] = y[n, c, :] * scale[c] + bias[c] for y [N, C, L]."""
    n_, c_ = y.shape[0], y.shape[1]
    for r in prange(n_ * c_):
        c = r % c_
        yr = y[r // c_, c]
        sc = scale[c]
        bi = bias[c]
        for i in range(yr.shape[0]):
            yr[i] = yr[i] * sc + bi


def _scale_bias_of(step: Step, cout: int) -> tuple[np.ndarray, np.ndarray]:
    scale = const_input(step, 3, "scale", "float32").reshape(-1)
    bias = const_input(step, 4, "bias", "float32").reshape(-1)
    if scale.size != cout or bias.size != cout:
        raise step.error(f"scale and bias must have {cout} values (one per output channel)")
    return scale, bias


@register("bnnc.BinaryWeightConv")
class BinaryWeightConv(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = window_attrs(step)
        g, cin, cout = int(step.attr("group", 1)), int(step.attr("cin", 0)), int(step.attr("cout", 0))
        if min(kh, kw, sh, sw, dh, dw, g, cin, cout) < 1 or min(pt, pl, pb, pr) < 0 or cin % g or cout % g:
            raise step.error("bad convolution attributes (sizes must be positive, channels multiples of group)")
        xs = step.in_shapes[0]
        if xs is None or len(xs) != 4:
            raise step.error("X must be float32 [N, C, H, W]")
        n, h, w_ = xs[0], xs[2], xs[3]
        check_input(step, 0, "X", (n, cin, h, w_), "float32")
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise step.error(f"the kernel does not fit the {h}x{w_} input")
        check_outputs(step, [((n, cout, oh, ow), "float32")])
        self.scale, self.bias = _scale_bias_of(step, cout)
        cg, og = cin // g, cout // g
        wf = weight_values(step, 1, (cout, cg, kh, kw)).astype(np.float32)
        self.direct = g > 1 and cg * kh * kw < 64
        self.geom = (kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
        self.plain = kh == kw == sh == sw == 1 and pt == pl == pb == pr == 0
        if self.direct:
            self.wf = np.ascontiguousarray(wf)
        else:
            self.wf = np.ascontiguousarray(wf.reshape(g, og, cg * kh * kw))
            self.col = None if self.plain else np.empty((cg * kh * kw, oh * ow), np.float32)
        self.g, self.cg, self.og, self.n = g, cg, og, n

    def run(self, ins, outs):
        x = np.ascontiguousarray(ins[0])
        y = outs[0]
        if self.direct:
            _direct_conv(x, self.wf, self.geom, y)
        else:
            hw = self.geom[8] * self.geom[9]
            for n in range(self.n):
                for g in range(self.g):
                    if self.plain:
                        col = x[n, g * self.cg:(g + 1) * self.cg].reshape(self.cg, hw)
                    else:
                        _im2col(x, n, g * self.cg, self.geom, self.col)
                        col = self.col
                    out = y[n, g * self.og:(g + 1) * self.og].reshape(self.og, hw)
                    np.matmul(self.wf[g], col, out=out)
        _scale_bias(y.reshape(y.shape[0], y.shape[1], -1), self.scale, self.bias)


@register("bnnc.BinaryWeightDense")
class BinaryWeightDense(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        cout, k = int(step.attr("cout", 0)), int(step.attr("k", 0))
        xs = step.in_shapes[0]
        if cout < 1 or k < 1 or xs is None or len(xs) < 2 or int(np.prod(xs[1:])) != k:
            raise step.error(f"X must be float32 [N, {k}] (cout >= 1), got {xs}")
        check_input(step, 0, "X", tuple(xs), "float32")
        check_outputs(step, [((xs[0], cout), "float32")])
        self.scale, self.bias = _scale_bias_of(step, cout)
        self.wt = np.ascontiguousarray(weight_values(step, 1, (cout, k)).astype(np.float32).T)
        self.n, self.k = xs[0], k

    def run(self, ins, outs):
        x = np.ascontiguousarray(ins[0]).reshape(self.n, self.k)
        y = outs[0]
        np.matmul(x, self.wt, out=y)
        _scale_bias(y.reshape(y.shape[0], y.shape[1], 1), self.scale, self.bias)
