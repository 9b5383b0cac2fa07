"""Float neural-network kernels: Conv, Gemm, MatMul (plain and bnnc.Fused*), BatchNormalization,
activations, and the max/average/global pools.

Conv (NCHW, 1-D or 2-D, any stride, dilation, padding and groups) takes one of three paths:

* im2col + BLAS: the image is copied once into a zero-padded buffer whose columns are split into
  ``stride`` phases, so that every row of the patch matrix ``col[K, OH*OW]`` (K = C/g * kh * kw,
  rows ordered (c, ki, kj) like the flattened weight ``[M, K]``) is a run of contiguous copies.
  ``col`` is built and multiplied one band of output rows at a time (about 1 MB, so it stays in
  cache) with ``W[M, K] @ col`` landing directly in the NCHW output. The bias rides in the GEMM as
  an extra weight column against a row of ones; a fused activation is applied to each band
  while it is in cache.
* direct, stride 1 (depthwise and narrow groups, where per-group GEMMs would be tiny): on the
  zero-padded image each tap is one long multiply-add over the whole flattened plane.
* direct, any stride: the same accumulation one output row at a time.

Activations are coded as small ints (``ACTIVATIONS``) with two float parameters so that one
compiled kernel serves every fused layer; the code is applied in place, as onnxruntime's
com.microsoft FusedConv does.

Numba inner loops here index 0-based slices (``dst = o[lo:hi]; dst[i]``): with an index that may
be negative Numba emits a wraparound check that stops LLVM from vectorizing the loop.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Kernel, Step, register

# activation name -> (code, default parameters); the parameters are a0, a1 of _act_rows
ACTIVATIONS = {
    "": (0, ()),
    "Relu": (1, ()),
    "LeakyRelu": (2, (0.01,)),
    "Clip": (3, (-math.inf, math.inf)),
    "Sigmoid": (4, ()),
    "Tanh": (5, ()),
    "HardSigmoid": (6, (0.2, 0.5)),
}
_CHUNK = 16384  # elements per task of the flat elementwise kernels
_COL_BYTES = 1 << 20  # target size of one band of the im2col patch matrix
_MIN_COLS = 256  # but at least this many columns per band, for GEMM efficiency


# -- shared Numba helpers ------------------------------------------------------------------------
@njit(cache=True)
def _act_rows(x, y, kind, a0, a1):
    """y[i] = act(x[i]) over 1-D arrays (x may be y); one simple loop per kind so each vectorizes."""
    n = x.shape[0]
    if kind == 0:
        for i in range(n):
            y[i] = x[i]
    elif kind == 1:
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else 0
    elif kind == 2:
        for i in range(n):
            v = x[i]
            y[i] = v if v >= 0 else v * a0
    elif kind == 3:
        for i in range(n):
            v = x[i]
            if v < a0:
                v = a0
            if v > a1:
                v = a1
            y[i] = v
    elif kind == 4:
        for i in range(n):
            v = x[i]
            if v >= 0:
                y[i] = 1.0 / (1.0 + math.exp(-v))
            else:
                e = math.exp(v)
                y[i] = e / (1.0 + e)
    elif kind == 5:
        for i in range(n):
            y[i] = math.tanh(x[i])
    elif kind == 6:
        for i in range(n):
            v = a0 * x[i] + a1
            y[i] = min(1.0, max(0.0, v))


@njit(parallel=True, cache=True)
def _act_flat(x, y, kind, a0, a1):
    n = x.shape[0]
    for t in prange((n + _CHUNK - 1) // _CHUNK):
        lo = t * _CHUNK
        hi = min(n, lo + _CHUNK)
        _act_rows(x[lo:hi], y[lo:hi], kind, a0, a1)


@njit(parallel=True, cache=True)
def _channel_affine_act(x, y, scale, bias, kind, a0, a1):
    """y[n, c, :] = act(x[n, c, :] * scale[c] + bias[c]) for (N, C, S) arrays (x may be y)."""
    N, C, S = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        xr = x[n, c]
        yr = y[n, c]
        sc = scale[c]
        b = bias[c]
        for s in range(S):
            yr[s] = xr[s] * sc + b
        if kind != 0:
            _act_rows(yr, yr, kind, a0, a1)


@njit(cache=True)
def _valid_range(off, stride, size, n_out):
    """The [lo, hi) of output positions o with 0 <= o * stride + off < size."""
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    hi = (size - 1 - off) // stride + 1 if size - 1 - off >= 0 else 0
    hi = min(hi, n_out)
    lo = min(lo, hi)
    return lo, hi


@njit(parallel=True, cache=True)
def _pad_phases(x, xph, pt, pl):
    """xph[c, p, pt + h, j] = x[c, h, j*sw + p - pl]: the zero-padded image with its columns split
    into sw phases (sw = xph.shape[1]), so that every im2col row reads contiguous memory.
    Only the interior is written; the padding border stays as allocated (zeros)."""
    C, H, W = x.shape
    sw = xph.shape[1]
    Wq = xph.shape[3]
    for c in prange(C):
        for h in range(H):
            xr = x[c, h]
            for p in range(sw):
                w0 = (p - pl) % sw
                j0 = (w0 + pl) // sw
                cnt = min((W - w0 + sw - 1) // sw, Wq - j0)
                if cnt > 0:
                    dst = xph[c, p, h + pt, j0:j0 + cnt]
                    src = xr[w0:]
                    for t in range(cnt):
                        dst[t] = src[t * sw]


@njit(parallel=True, cache=True)
def _im2col(xph, c0, cg, col, KH, KW, sh, dh, dw, oh0, oh1, OW):
    """col[(c, ki, kj), (oh - oh0, ow)] = padded x[c0 + c, oh*sh + ki*dh, ow*sw + kj*dw] for the band
    of output rows oh0 <= oh < oh1, read from the phase-split image of _pad_phases; rows of col
    past cg*KH*KW (the bias row) are set to 1."""
    sw = xph.shape[1]
    kk = KH * KW
    for r in prange(col.shape[0]):
        row = col[r]
        if r >= cg * kk:
            row[:] = 1
            continue
        c = r // kk
        ki = (r - c * kk) // KW
        kj = r - c * kk - ki * KW
        plane = xph[c0 + c, (kj * dw) % sw]
        q = (kj * dw) // sw
        for oh in range(oh0, oh1):
            src = plane[oh * sh + ki * dh, q:q + OW]
            dst = row[(oh - oh0) * OW:(oh - oh0 + 1) * OW]
            for i in range(OW):
                dst[i] = src[i]


@njit(parallel=True, cache=True)
def _act_band(y, i, m0, m1, s0, s1, kind, a0, a1):
    """In place act on y[i, m0:m1, s0:s1] of an (N, M, S) array: one GEMM band, still in cache."""
    for m in prange(m0, m1):
        r = y[i, m, s0:s1]
        _act_rows(r, r, kind, a0, a1)


@njit(parallel=True, cache=True)
def _conv_direct(x, w, bias, y, sh, sw, dh, dw, pt, pl, kind, a0, a1):
    """Direct grouped convolution: x (N, C, H, W), w (M, C/g, KH, KW), y (N, M, OH, OW).

    Each output row is accumulated in cache, one weight times a shifted input row at a time.
    Inner loops index 0-based slices: Numba then knows the index is not negative (no
    wraparound check) and vectorizes them; the same holds for the pools below.
    """
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    OH = y.shape[2]
    OW = y.shape[3]
    Mg = M // (C // Cg)
    los = np.empty(KW, np.int64)
    his = np.empty(KW, np.int64)
    for kj in range(KW):
        los[kj], his[kj] = _valid_range(kj * dw - pl, sw, W, OW)
    for nm in prange(N * M):
        n = nm // M
        m = nm - n * M
        c0 = (m // Mg) * Cg
        b = bias[m]
        for oh in range(OH):
            o = y[n, m, oh]
            for i in range(OW):
                o[i] = b
            for c in range(Cg):
                for ki in range(KH):
                    ih = oh * sh - pt + ki * dh
                    if ih < 0 or ih >= H:
                        continue
                    xr = x[n, c0 + c, ih]
                    for kj in range(KW):
                        wv = w[m, c, ki, kj]
                        off = kj * dw - pl
                        lo, hi = los[kj], his[kj]
                        dst = o[lo:hi]
                        src = xr[lo * sw + off:]
                        if sw == 1:
                            for i in range(hi - lo):
                                dst[i] += wv * src[i]
                        elif sw == 2:  # a constant stride vectorizes (interleaved loads)
                            for i in range(hi - lo):
                                dst[i] += wv * src[2 * i]
                        else:
                            for i in range(hi - lo):
                                dst[i] += wv * src[i * sw]
            if kind != 0:
                _act_rows(o, o, kind, a0, a1)


@njit(parallel=True, cache=True)
def _conv_direct_s1(x, xp, wide, w, bias, y, dh, dw, pt, pl, kind, a0, a1):
    """Direct grouped convolution with stride 1 on a zero-padded copy xp (N, C, Hp, Wp) of x.

    With the padded row width Wp, output (oh, ow) of tap (ki, kj) reads flat element
    (oh + ki*dh) * Wp + ow + kj*dw of the channel: each tap is one long vectorized
    multiply-add over the whole plane, computed Wp wide into ``wide`` (N, M, OH*Wp) and
    cropped to OW columns at the end. Three taps of a kernel row share each pass.
    """
    N, C, H, W = x.shape
    M, Cg, KH, KW = w.shape
    Hp, Wp = xp.shape[2], xp.shape[3]
    OH = y.shape[2]
    OW = y.shape[3]
    Mg = M // (C // Cg)
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for h in range(H):
            dst = xp[n, c, pt + h, pl:pl + W]
            src = x[n, c, h]
            for i in range(W):
                dst[i] = src[i]
    L = (OH - 1) * Wp + OW
    for nm in prange(N * M):
        n = nm // M
        m = nm - n * M
        c0 = (m // Mg) * Cg
        acc = wide[n, m]
        b = bias[m]
        for i in range(L):
            acc[i] = b
        for c in range(Cg):
            xf = xp[n, c0 + c].reshape(Hp * Wp)
            for ki in range(KH):
                row = ki * dh * Wp
                kj = 0
                while kj + 3 <= KW:
                    w0 = w[m, c, ki, kj]
                    w1 = w[m, c, ki, kj + 1]
                    w2 = w[m, c, ki, kj + 2]
                    s0 = xf[row + kj * dw:]
                    s1 = xf[row + (kj + 1) * dw:]
                    s2 = xf[row + (kj + 2) * dw:]
                    for i in range(L):
                        acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
                    kj += 3
                while kj < KW:
                    wv = w[m, c, ki, kj]
                    src = xf[row + kj * dw:]
                    for i in range(L):
                        acc[i] += wv * src[i]
                    kj += 1
        for oh in range(OH):
            o = y[n, m, oh]
            a = acc[oh * Wp:]
            for i in range(OW):
                o[i] = a[i]
            if kind != 0:
                _act_rows(o, o, kind, a0, a1)


@njit(cache=True)
def _max_into(acc, src):
    """acc = max(acc, src). Numba's np.maximum vectorizes where a select loop does not; it sits in
    its own (serial) function because inside a prange body the parfor pass would rewrite it."""
    np.maximum(acc, src, acc)


@njit(parallel=True, cache=True)
def _pool(x, y, div, KH, KW, sh, sw, dh, dw, pt, pl, is_max, lowest):
    """Max or average pooling of x (N, C, H, W) into y (N, C, OH, OW); an average is the window
    sum over input positions divided by div[oh, ow] (the count the caller chose).

    Separable: per output row, the KH input rows are first reduced into a padded row ``vm``
    (long contiguous loops), then the KW taps are reduced along it. Maxima use a select, not a
    branch (random data mispredicts half the time).
    """
    N, C, H, W = x.shape
    OH = y.shape[2]
    OW = y.shape[3]
    pad = lowest if is_max else 0
    Lp = max((OW - 1) * sw + (KW - 1) * dw + 1, pl + W)
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        vm = np.full(Lp, pad, dtype=y.dtype)  # positions outside [pl, pl + W) stay padding
        vin = vm[pl:pl + W]
        for oh in range(OH):
            first = True
            for ki in range(KH):
                ih = oh * sh - pt + ki * dh
                if ih < 0 or ih >= H:
                    continue
                src = x[n, c, ih]
                if first:
                    for i in range(W):
                        vin[i] = src[i]
                    first = False
                elif is_max:
                    _max_into(vin, src)
                else:
                    for i in range(W):
                        vin[i] += src[i]
            if first:
                for i in range(W):
                    vin[i] = pad
            o = y[n, c, oh]
            for kj in range(KW):
                tap = vm[kj * dw:]
                if kj == 0:
                    for i in range(OW):
                        o[i] = tap[i * sw]
                elif is_max:
                    for i in range(OW):
                        v = tap[i * sw]
                        d = o[i]
                        o[i] = v if v > d else d
                else:
                    for i in range(OW):
                        o[i] += tap[i * sw]
            if not is_max:
                d = div[oh]
                for i in range(OW):
                    o[i] = o[i] / d[i] if d[i] > 0 else 0


@njit(parallel=True, cache=True)
def _global_pool(x, y, is_max):
    """y[r] = mean or max of x[r, :] for a (rows, S) array."""
    R, S = x.shape
    for r in prange(R):
        xr = x[r]
        if is_max:
            m = xr[0]
            for s in range(1, S):
                if xr[s] > m:
                    m = xr[s]
            y[r] = m
        else:
            acc = 0.0
            for s in range(S):
                acc += xr[s]
            y[r] = acc / S


# -- validated wrappers --------------------------------------------------------------------------
def activate(x: np.ndarray, y: np.ndarray, kind: int, a0: float = 0.0, a1: float = 0.0) -> None:
    """y = act(x) elementwise for contiguous arrays of one shape (x may be y)."""
    assert x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous
    if kind != 0 or x is not y:
        _act_flat(x.reshape(-1), y.reshape(-1), kind, float(a0), float(a1))


def channel_affine(x: np.ndarray, y: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                   kind: int = 0, a0: float = 0.0, a1: float = 0.0) -> None:
    """y = act(x * scale[c] + bias[c]) with channels on axis 1 of contiguous x and y."""
    assert x.shape == y.shape and x.flags.c_contiguous and y.flags.c_contiguous
    n, c = (x.shape[0], x.shape[1]) if x.ndim >= 2 else (1, x.shape[0])
    _channel_affine_act(x.reshape(n, c, -1), y.reshape(n, c, -1), scale, bias, kind, float(a0), float(a1))


def activation_of(step: Step, name: str | None = None, params: list | None = None) -> tuple[int, float, float]:
    """The (code, a0, a1) of an activation, by default from a fused node's attributes."""
    if name is None:
        name = step.attr("activation", "")
        params = step.attr("activation_params", None)
    if name not in ACTIVATIONS:
        raise step.error(f"unsupported fused activation '{name}' (supported: {', '.join(a for a in ACTIVATIONS if a)})")
    code, defaults = ACTIVATIONS[name]
    p = list(defaults) if not params else [float(v) for v in params]
    if len(p) != len(defaults):
        raise step.error(f"activation {name} takes {len(defaults)} parameters, got {len(p)}")
    p += [0.0, 0.0]
    return code, float(p[0]), float(p[1])


def window_geometry(step: Step, in_sp, k_sp, out_sp):
    """Kernel, strides, dilations and (top, left, bottom, right) pads of a 1-D or 2-D window op,
    with auto_pad resolved and 1-D problems lifted to 2-D (H = 1)."""
    r = len(in_sp)
    if r not in (1, 2) or len(k_sp) != r:
        raise step.error(f"only 1-D and 2-D windows are supported (this one is {r}-D)")
    strides = list(step.attr("strides") or [1] * r)
    dil = list(step.attr("dilations") or [1] * r)
    auto = step.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = list(step.attr("pads") or [0] * (2 * r))
    elif auto == "VALID":
        pads = [0] * (2 * r)
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * r)
        for i in range(r):
            total = max(0, (out_sp[i] - 1) * strides[i] + (k_sp[i] - 1) * dil[i] + 1 - in_sp[i])
            small = total // 2
            pads[i] = small if auto == "SAME_UPPER" else total - small
            pads[i + r] = total - pads[i]
    else:
        raise step.error(f"unknown auto_pad '{auto}'")
    if len(strides) != r or len(dil) != r or len(pads) != 2 * r:
        raise step.error("strides, dilations or pads do not match the number of spatial axes")
    if min(strides) < 1 or min(dil) < 1 or min(pads) < 0:
        raise step.error("strides and dilations must be positive and pads non-negative")
    if r == 1:
        return (1, k_sp[0]), (1, strides[0]), (1, dil[0]), (0, pads[0], 0, pads[1])
    return tuple(k_sp), tuple(strides), tuple(dil), (pads[0], pads[1], pads[2], pads[3])


def _lift4(shape):
    """(N, C, L) -> (N, C, 1, L); (N, C, H, W) unchanged."""
    return tuple(shape) if len(shape) == 4 else (shape[0], shape[1], 1, shape[2])


def same_shape(step: Step) -> None:
    """The Numba kernels index without bounds checks: an artifact whose plan gives an output
    shape that does not match the input is refused here, not read out of bounds later."""
    if tuple(step.in_shapes[0] or ()) != tuple(step.out_shapes[0]):
        raise step.error(f"output shape {list(step.out_shapes[0])} differs from input shape {list(step.in_shapes[0])}")


# -- kernels -------------------------------------------------------------------------------------
@register("Conv", "bnnc.FusedConv")
class Conv(Kernel):
    """NCHW convolution, 1-D or 2-D, any groups; see the module docstring for the strategy.

    On the im2col path the bias rides in the GEMM: the weights get a bias column and the patch
    matrix a row of ones, so no pass over the output is needed for it.
    """

    def __init__(self, step: Step):
        super().__init__(step)
        xs, ws, ys = step.in_shapes[0], step.in_shapes[1], step.out_shapes[0]
        if xs is None or ws is None or len(xs) not in (3, 4) or len(ws) != len(xs):
            raise step.error(f"expects 1-D or 2-D NCHW input and weights, got shapes {xs} and {ws}")
        self.act = activation_of(step) if step.op == "bnnc.FusedConv" else (0, 0.0, 0.0)
        g = int(step.attr("group", 1))
        k_sp = list(step.attr("kernel_shape") or ws[2:])
        (kh, kw), self.strides, self.dil, self.pads = window_geometry(step, xs[2:], k_sp, ys[2:])
        self.x4, self.y4 = _lift4(xs), _lift4(ys)
        n, c, h, w = self.x4
        m, cg = ws[0], ws[1]
        if c != cg * g or m % g or list(ws[2:]) != k_sp:
            raise step.error(f"input has {c} channels; weights {list(ws)} do not fit group={g}")
        self._check_output(n, m, (kh, kw))
        self.w4 = (m, cg, kh, kw)
        self.groups, self.cg, self.mg = g, cg, m // g
        self.dtype = np.dtype(step.out_dtypes[0])
        self.has_bias = len(step.in_shapes) > 2 and step.in_shapes[2] is not None
        # narrow groups make tiny GEMMs: a direct loop is faster there
        self.direct = g > 1 and cg * self.mg <= 256
        consts = list(step.consts) + [None]
        self.const = consts[1] is not None and (consts[2] is not None or not self.has_bias)
        self.params = self._params(consts[1], consts[2]) if self.const else None
        if self.direct:
            self._plan_direct()
        else:
            self._plan_im2col()

    def _check_output(self, n: int, m: int, k: tuple[int, int]) -> None:
        want = [n, m]
        for a in (0, 1):
            span = (k[a] - 1) * self.dil[a] + 1
            want.append((self.x4[2 + a] + self.pads[a] + self.pads[a + 2] - span) // self.strides[a] + 1)
        if list(self.y4) != want or min(want) < 1:
            raise self.step.error(f"output shape {list(self.step.out_shapes[0])} does not match the convolution")
        bias = self.step.in_shapes[2] if len(self.step.in_shapes) > 2 else None
        if bias is not None and math.prod(bias) != m:
            raise self.step.error(f"bias has shape {list(bias)}, expected [{m}]")

    def _params(self, w: np.ndarray, b: np.ndarray | None):
        """Weights (direct: [M, Cg, kh, kw] and bias; im2col: [M, K (+1 bias column)])."""
        m = self.w4[0]
        w = np.asarray(w, dtype=self.dtype).reshape(self.w4)
        b = np.zeros(m, self.dtype) if b is None else np.asarray(b, dtype=self.dtype).reshape(m)
        if self.direct:
            return np.ascontiguousarray(w), np.ascontiguousarray(b)
        w2 = w.reshape(m, -1)
        if self.has_bias:
            w2 = np.concatenate([w2, b[:, None]], axis=1)
        return np.ascontiguousarray(w2), None

    def _plan_direct(self) -> None:
        n, c, h, w = self.x4
        oh, ow = self.y4[2:]
        pt, pl, pb, pr = self.pads
        hp, wp = h + pt + pb, w + pl + pr
        kh, kw = self.w4[2:]
        dh, dw = self.dil
        self.flat = self.strides == (1, 1) and (hp - (kh - 1) * dh, wp - (kw - 1) * dw) == (oh, ow)
        if self.flat:  # the padding border is written once, here
            self.xp = np.zeros((n, c, hp, wp), self.dtype)
            self.wide = np.empty((n, self.w4[0], oh * wp), self.dtype)

    def _plan_im2col(self) -> None:
        # the patch matrix is built and multiplied one band of output rows at a time, so that
        # it stays in cache between im2col and the GEMM
        oh, ow = self.y4[2:]
        self.k = self.cg * self.w4[2] * self.w4[3] + (1 if self.has_bias else 0)
        band = max(_COL_BYTES // (self.k * ow * self.dtype.itemsize), -(-_MIN_COLS // ow))
        self.band = min(oh, max(1, band))
        self.col = np.empty(self.k * self.band * ow, self.dtype)
        n, c, h, w = self.x4
        (kh, kw), (sh, sw), (dh, dw), pt = self.w4[2:], self.strides, self.dil, self.pads[0]
        self.xph = None  # unpadded stride-1 input is its own phase-split image
        if sw > 1 or any(self.pads):
            hp = max(h + pt, (oh - 1) * sh + (kh - 1) * dh + 1)
            self.xph = np.zeros((c, sw, hp, (kw - 1) * dw // sw + ow), self.dtype)

    def run(self, ins, outs):
        x = ins[0].reshape(self.x4)
        y = outs[0].reshape(self.y4)
        w, b = self.params if self.const else self._params(ins[1], ins[2] if self.has_bias else None)
        kind, a0, a1 = self.act
        (sh, sw), (dh, dw), (pt, pl) = self.strides, self.dil, self.pads[:2]
        if self.direct and self.flat:
            _conv_direct_s1(x, self.xp, self.wide, w, b, y, dh, dw, pt, pl, kind, a0, a1)
        elif self.direct:
            _conv_direct(x, w, b, y, sh, sw, dh, dw, pt, pl, kind, a0, a1)
        else:
            self._run_im2col(x, w, y)

    def _run_im2col(self, x: np.ndarray, w2: np.ndarray, y: np.ndarray) -> None:
        n, m, oh, ow = self.y4
        y3 = y.reshape(n, m, oh * ow)
        (kh, kw), (sh, _), (dh, dw), (pt, pl) = self.w4[2:], self.strides, self.dil, self.pads[:2]
        kind, a0, a1 = self.act
        mg, cg = self.mg, self.cg
        for i in range(n):
            xph = self.xph
            if xph is None:
                xph = x[i].reshape(x.shape[1], 1, x.shape[2], x.shape[3])
            else:
                _pad_phases(x[i], xph, pt, pl)
            for g in range(self.groups):
                wg, yg = w2[g * mg:(g + 1) * mg], y3[i, g * mg:(g + 1) * mg]
                for r0 in range(0, oh, self.band):
                    r1 = min(oh, r0 + self.band)
                    col = self.col[:self.k * (r1 - r0) * ow].reshape(self.k, (r1 - r0) * ow)
                    _im2col(xph, g * cg, cg, col, kh, kw, sh, dh, dw, r0, r1, ow)
                    np.matmul(wg, col, out=yg[:, r0 * ow:r1 * ow])
                    if kind != 0:
                        _act_band(y3, i, g * mg, (g + 1) * mg, r0 * ow, r1 * ow, kind, a0, a1)


@register("Gemm", "bnnc.FusedGemm")
class Gemm(Kernel):
    """Y = act(alpha * A' @ B' + beta * C); a constant B is transposed and scaled once."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.act = activation_of(step) if step.op == "bnnc.FusedGemm" else (0, 0.0, 0.0)
        self.alpha = float(step.attr("alpha", 1.0))
        self.beta = float(step.attr("beta", 1.0))
        self.trans_a = bool(step.attr("transA", 0))
        self.trans_b = bool(step.attr("transB", 0))
        self.dtype = np.dtype(step.out_dtypes[0])
        self.b = self._b(step.consts[1], True) if step.consts[1] is not None else None
        self.has_c = len(step.in_shapes) > 2 and step.in_shapes[2] is not None and self.beta != 0.0
        self.c = None
        if self.has_c and step.consts[2] is not None:
            self.c = self._c(step.consts[2])

    def _b(self, b: np.ndarray, fold_alpha: bool) -> np.ndarray:
        b = b.T if self.trans_b else b
        if fold_alpha and self.alpha != 1.0:
            b = b * self.dtype.type(self.alpha)
        return np.ascontiguousarray(b, dtype=self.dtype)

    def _c(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=self.dtype) * self.dtype.type(self.beta)
        try:
            return np.ascontiguousarray(np.broadcast_to(c, self.step.out_shapes[0]))
        except ValueError:
            raise self.step.error(f"C of shape {c.shape} does not broadcast to {self.step.out_shapes[0]}") from None

    def run(self, ins, outs):
        a = ins[0].T if self.trans_a else ins[0]
        y = outs[0]
        if self.b is not None:
            np.matmul(a, self.b, out=y)
        else:
            np.matmul(a, self._b(ins[1], False), out=y)
            if self.alpha != 1.0:
                y *= self.dtype.type(self.alpha)
        if self.has_c:
            np.add(y, self.c if self.c is not None else self._c(ins[2]), out=y)
        if self.act[0] != 0:
            activate(y, y, *self.act)


@register("MatMul", "bnnc.FusedMatMul")
class MatMul(Kernel):
    """numpy-semantics matmul (batched, broadcast, 1-D operands); a constant 2-D B with a
    contiguous A is one GEMM over all leading rows."""

    def __init__(self, step: Step):
        super().__init__(step)
        self.act = activation_of(step) if step.op == "bnnc.FusedMatMul" else (0, 0.0, 0.0)
        b = step.consts[1]
        self.b = np.ascontiguousarray(b) if b is not None else None
        a_shape = step.in_shapes[0]
        self.flat = b is not None and b.ndim == 2 and a_shape is not None and len(a_shape) > 2

    def run(self, ins, outs):
        a, y = ins[0], outs[0]
        b = self.b if self.b is not None else ins[1]
        if self.flat:
            np.matmul(a.reshape(-1, a.shape[-1]), b, out=y.reshape(-1, y.shape[-1]))
        else:
            np.matmul(a, b, out=y)
        if self.act[0] != 0:
            activate(y, y, *self.act)


@register("BatchNormalization")
class BatchNormalization(Kernel):
    """Inference BatchNorm folded into y = x * a[c] + b[c], a = scale / sqrt(var + eps),
    b = B - mean * a (computed in float64 once when the statistics are constants)."""

    def __init__(self, step: Step):
        super().__init__(step)
        if step.attr("training_mode", 0) or len(step.out_shapes) > 1:
            raise step.error("training-mode BatchNormalization is not supported (export the model in eval mode)")
        self.eps = float(step.attr("epsilon", 1e-5))
        self.dtype = np.dtype(step.out_dtypes[0])
        same_shape(step)
        c = step.in_shapes[0][1] if len(step.in_shapes[0]) > 1 else step.in_shapes[0][0]
        if len(step.in_shapes) != 5 or any(math.prod(s or ()) != c for s in step.in_shapes[1:5]):
            raise step.error(f"scale, B, mean and var must have {c} elements each")
        self.ab = self._fold(step.consts[1:5]) if all(c is not None for c in step.consts[1:5]) else None

    def _fold(self, p):
        scale, b, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in p)
        a = scale / np.sqrt(var + self.eps)
        return a.astype(self.dtype), (b - mean * a).astype(self.dtype)

    def run(self, ins, outs):
        a, b = self.ab if self.ab is not None else self._fold(ins[1:5])
        channel_affine(ins[0], outs[0], a, b)


class Pool(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        xs, ys = step.in_shapes[0], step.out_shapes[0]
        if len(step.out_shapes) > 1:
            raise step.error("the Indices output of MaxPool is not supported")
        if len(xs) not in (3, 4):
            raise step.error(f"only 1-D and 2-D pooling is supported, got input shape {xs}")
        k_sp = step.attr("kernel_shape")
        if not k_sp:
            raise step.error("kernel_shape is required")
        self.k, self.s, self.d, self.p = window_geometry(step, xs[2:], list(k_sp), ys[2:])
        self.x4, self.y4 = _lift4(xs), _lift4(ys)
        if self.x4[:2] != self.y4[:2] or len(xs) != len(ys):
            raise step.error(f"output shape {list(ys)} does not match input shape {list(xs)}")
        dt = np.dtype(step.in_dtypes[0])
        self.lowest = dt.type(np.finfo(dt).min if dt.kind == "f" else np.iinfo(dt).min)
        self.is_max = step.op == "MaxPool"
        self.div = np.ones((1, 1), dt)
        if not self.is_max:
            self.div = self._divisors(bool(step.attr("count_include_pad", 0))).astype(dt)

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

    def run(self, ins, outs):
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = self.k, self.s, self.d, self.p
        _pool(ins[0].reshape(self.x4), outs[0].reshape(self.y4), self.div, kh, kw, sh, sw, dh, dw, pt, pl,
              self.is_max, self.lowest)


register("MaxPool", "AveragePool")(Pool)


@register("GlobalAveragePool", "GlobalMaxPool")
class GlobalPool(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        xs = step.in_shapes[0]
        if len(xs) < 3:
            raise step.error(f"expects an input with spatial axes, got shape {xs}")
        self.rows = xs[0] * xs[1]
        self.is_max = step.op == "GlobalMaxPool"
        if math.prod(step.out_shapes[0]) != self.rows:
            raise step.error(f"output shape {list(step.out_shapes[0])} does not match input shape {list(xs)}")

    def run(self, ins, outs):
        _global_pool(ins[0].reshape(self.rows, -1), outs[0].reshape(-1), self.is_max)
