"""The GEMM path of the float convolution (runtime/kernels/conv.py): patch matrix + BLAS, in bands.

For group g, ``y[n, g*Mg + m, oh, ow] = act(bias[m] + sum_r W[m, r] * col[r, (n, oh, ow)])`` with
``col[(c, ki, kj), (n, oh, ow)] = x[n, g*Cg + c, oh*sh - pt + ki*dh, ow*sw - pl + kj*dw]`` (0 in
the padding): a (Mg x K) @ (K x positions) product, K = Cg * KH * KW.

The output rows (n, oh) are cut into bands (``GemmPlan``): whole images when an image is small,
else runs of rows of one image, each with a patch matrix of about ``_BAND_BYTES`` so that it stays
in cache while BLAS packs it. One task per (group, band) builds the band's patch matrix, multiplies
it by the weights (runtime/blas.py, ``gemm``) and adds bias and activation to the result while it
is in cache. How a band's patch matrix is built (the cheapest that fits the geometry):

* ``POINTWISE`` (1x1, stride 1, no padding): none for a band inside one image, the input is one.
* ``SHIFT`` (stride 1, output as wide as the input, the usual "same" convolution): for one image,
  a tap's row of the patch matrix is the input plane shifted by (ki*dh - pt) rows and (kj*dw - pl)
  columns: one contiguous copy per tap and image, then zeros where the shift crossed an edge.
* ``WIDE`` (other strides, when it wastes little): the padded input is split into stride phases
  once (``phase_split``: plane (pr, pc) holds padded x[a*sh + pr, b*sw + pc]), and the output is
  computed Wq = OW + (KW-1)*dw // sw columns wide, so that a tap's row is one contiguous copy from
  one phase plane; the extra columns are dropped when the result is copied out.
* ``NARROW`` (anything else): one copy per output row and tap, zeros in the padding.

A band inside one image (not ``WIDE``) is written straight into the output (rows of the output
plane are its columns), which is first filled with the bias so that BLAS adds to it (beta = 1:
it skips zeroing the block, and no second pass adds the bias); otherwise the result goes to a
scratch block and is copied out with the bias. Most float convs of one group take register
tiles instead (runtime/kernels/conv_tile.py); this path serves the pointwise ones, small planes
and groups. Tasks go round-robin to ``T`` threads (``prange`` over T, each with its own patch matrix
and scratch block, rows ``col[t]``, ``yw[t]``); the band count is a multiple of T where that is
possible, so the threads finish together. BLAS itself runs single-threaded in each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from runtime.blas import gemm
from runtime.kernels.base import Twin
from runtime.kernels.conv_split import BLOCK, split2, split4
from runtime.kernels.nn import act_inplace

_BAND_BYTES = 1 << 18  # target size of one band's patch matrix (stays in L2 while BLAS packs it)
_MIN_COLS = 128  # but at least this many columns (output positions) per band, for GEMM efficiency
_MAX_WASTE = 0.15  # WIDE when the extra columns add at most this fraction of work
NARROW, SHIFT, WIDE, POINTWISE = 0, 1, 2, 3
_MODES = (POINTWISE, SHIFT, WIDE, NARROW)  # in order of preference: the first that fits is used


@njit(cache=True, nogil=True)
def bias_act(src, dst, b, kind, a0, a1):
    """dst[i] = act(src[i] + b) over 1-D arrays (src may be dst); Relu is fused into the add, the
    other activations run as a second pass while the row is in cache."""
    n = dst.shape[0]
    if src.ctypes.data == dst.ctypes.data:  # one name per buffer, or LLVM will not vectorize
        if kind == 1:
            for i in range(n):
                v = dst[i] + b
                dst[i] = v if v > 0 else 0
            return
        for i in range(n):
            dst[i] += b
    elif kind == 1:
        for i in range(n):
            v = src[i] + b
            dst[i] = v if v > 0 else 0
        return
    else:
        for i in range(n):
            dst[i] = src[i] + b
    if kind != 0:
        act_inplace(dst, kind, a0, a1)


@njit(cache=True, nogil=True, inline="always")
def copy_strided(dst, src, cnt, sw):
    """dst[t] = src[t * sw] for t < cnt; strides 1, 2 and 4 as constant-stride loops LLVM
    vectorizes."""
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
def phase_split(x, xq, pt, pl):
    """xq[c, pr, pc, a, b] = x[c, a*sh + pr - pt, b*sw + pc - pl] wherever that is inside x, for
    one image x (C, H, W) and xq (C, sh, sw, Hq, Wq). Only those positions are written: the rest
    (the padding) keeps the value the buffer was allocated with. Rows of 4-byte values with
    column strides 2 and 4 are split by vector shuffles (runtime/kernels/conv_split.py), the
    columns at their ends one by one; else constant-stride loops for strides 1, 2 and 4 let LLVM
    vectorize the gathers."""
    C, H, W = x.shape
    sh, sw, Hq, Wq = xq.shape[1], xq.shape[2], xq.shape[3], xq.shape[4]
    b_s = -(-pl // sw)  # the first phase column whose values all come from x
    w_s = b_s * sw - pl
    b_e = min((W + pl) // sw - BLOCK, Wq - BLOCK)  # the last block, overlapping the others
    blocks = -(-(b_e - b_s) // BLOCK)  # before the last one
    shuffled = (sw == 2 or sw == 4) and b_e >= b_s and w_s >= 0 and x.itemsize == 4 and x.strides[2] == 4 and xq.strides[4] == 4
    for c in range(C):
        for h in range(H):
            a = (h + pt) // sh
            if a >= Hq:
                break
            pr = h + pt - a * sh
            xr = x[c, h]
            if shuffled:
                dst = xq[c, pr, 0, a]
                _split_row(dst, b_s, xq.strides[2] // 4, xr, w_s, blocks, sw)
                _split_row(dst, b_e, xq.strides[2] // 4, xr, b_e * sw - pl, 1, sw)
                for pc in range(sw):  # the columns before and after the blocks, no division
                    w = (b_s - 1) * sw + pc - pl
                    if 0 <= w < W:
                        xq[c, pr, pc, a, b_s - 1] = xr[w]
                    b = b_e + BLOCK
                    w = b * sw + pc - pl
                    while w < W and b < Wq:
                        xq[c, pr, pc, a, b] = xr[w]
                        b += 1
                        w += sw
                continue
            for pc in range(sw):
                w0 = (pc - pl) % sw
                b0 = (w0 + pl) // sw
                cnt = min((W - w0 + sw - 1) // sw, Wq - b0)
                dst = xq[c, h + pt - a * sh, pc, a, b0:]
                src = xr[w0:]
                copy_strided(dst, src, cnt, sw)


@njit(cache=True, nogil=True, inline="always")
def _split_row(dst, d0, pstride, src, s0, n, sw):
    if sw == 2:
        split2(dst, d0, pstride, src, s0, n)
    else:
        split4(dst, d0, pstride, src, s0, n)


@njit(cache=True, nogil=True)
def _pieces(q0, q1, OH, OW):
    """The images a band of whole output rows q0 <= q < q1 covers: rows (n, oh0, oh1) of an int64
    array, each image's rows oh0 <= oh < oh1."""
    ohw = OH * OW
    n0, n1 = q0 // ohw, (q1 - 1) // ohw
    out = np.empty((n1 - n0 + 1, 3), np.int64)
    for n in range(n0, n1 + 1):
        out[n - n0, 0] = n
        out[n - n0, 1] = max(q0 - n * ohw, 0) // OW
        out[n - n0, 2] = (min(q1 - n * ohw, ohw) + OW - 1) // OW
    return out


@njit(cache=True, nogil=True)
def _fill(a, lo, hi):
    for i in range(max(lo, 0), min(hi, a.shape[0])):
        a[i] = 0


@njit(cache=True, nogil=True)
def _fill_rows(dst, ld, cols, values):
    """dst[m * ld + j] = values[m] for j < cols."""
    for m in range(values.shape[0]):
        row = dst[m * ld:m * ld + cols]
        v = values[m]
        for j in range(cols):
            row[j] = v


@njit(cache=True, nogil=True)
def _im2col_narrow(x, c0, k, col, pieces, cols, geo):
    """col[r * cols + j] = tap r = (c, ki, kj) of input channel c0 + c at the band's output
    position j, 0 in the padding: one copy per output row and tap."""
    OH, OW, KH, KW, sh, sw, dh, dw, pt, pl = geo
    H, W = x.shape[2], x.shape[3]
    d0 = 0
    for c in range(k // (KH * KW)):
        for ki in range(KH):
            for kj in range(KW):
                off = kj * dw - pl  # input column of output column ow: ow*sw + off
                lo = min(OW, 0 if off >= 0 else (sw - 1 - off) // sw)
                hi = max(lo, min(OW, (W - 1 - off) // sw + 1) if W - 1 - off >= 0 else 0)
                for s in range(pieces.shape[0]):
                    n = pieces[s, 0]
                    for oh in range(pieces[s, 1], pieces[s, 2]):
                        seg = col[d0:d0 + OW]
                        d0 += OW
                        ih = oh * sh - pt + ki * dh
                        if ih < 0 or ih >= H:
                            _fill(seg, 0, OW)
                            continue
                        _fill(seg, 0, lo)
                        _fill(seg, hi, OW)
                        d = seg[lo:]
                        src = x[n, c0 + c, ih, lo * sw + off:]
                        if sw == 1:
                            for i in range(hi - lo):
                                d[i] = src[i]
                        elif sw == 2:
                            for i in range(hi - lo):
                                d[i] = src[2 * i]
                        else:
                            for i in range(hi - lo):
                                d[i] = src[i * sw]


@njit(cache=True, nogil=True)
def _im2col_shift(x, c0, k, col, pieces, cols, geo):
    """The patch matrix of a stride-1 conv whose output is as wide as its input (W == OW): per
    tap and image, the plane shifted by u = ki*dh - pt rows and v = kj*dw - pl columns is one
    contiguous copy; the v columns it wrapped around a row edge are then zeroed."""
    OH, OW, KH, KW, sh, sw, dh, dw, pt, pl = geo
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    hw = H * W
    xf = x.reshape(x.shape[0] * C * hw)
    d0 = 0
    for c in range(k // (KH * KW)):
        for ki in range(KH):
            u = ki * dh - pt
            for kj in range(KW):
                v = kj * dw - pl
                e0, e1 = (0, min(-v, W)) if v < 0 else (max(W - v, 0), W)  # the wrapped columns
                for s in range(pieces.shape[0]):
                    n, oh0, oh1 = pieces[s, 0], pieces[s, 1], pieces[s, 2]
                    dst = col[d0:d0 + (oh1 - oh0) * W]
                    d0 += (oh1 - oh0) * W
                    va = min(max(oh0, -u), oh1)  # output rows whose input row is inside the plane
                    vb = max(min(oh1, H - u), va)
                    _fill(dst, 0, (va - oh0) * W)
                    _fill(dst, (vb - oh0) * W, (oh1 - oh0) * W)
                    if vb == va:
                        continue
                    s0 = (va + u) * W + v  # source of the first valid row's first element
                    lo, hi = max(0, -s0), max(0, s0 + (vb - va) * W - hw)  # clipped at the plane's ends
                    d = dst[(va - oh0) * W + lo:(vb - oh0) * W - hi]
                    src = xf[(n * C + c0 + c) * hw + s0 + lo:]
                    for i in range(d.shape[0]):
                        d[i] = src[i]
                    _fill(dst, (va - oh0) * W, (va - oh0) * W + lo)
                    _fill(dst, (vb - oh0) * W - hi, (vb - oh0) * W)
                    for j in range(e0, e1):
                        for oh in range(va - oh0, vb - oh0):
                            dst[oh * W + j] = 0


@njit(cache=True, nogil=True)
def _im2col_wide(xq, c0, k, col, pieces, cols, geo):
    """The patch matrix of a band computed Wq wide from the phase-split image xq (N, C, sh, sw,
    Hq, Wq): per tap and image, one contiguous copy from one phase plane (its last run is cut at
    the plane's end: those columns are dropped later)."""
    OH, OW, KH, KW, sh, sw, dh, dw, pt, pl = geo
    Hq, Wq = xq.shape[4], xq.shape[5]
    d0 = 0
    for c in range(k // (KH * KW)):
        for ki in range(KH):
            for kj in range(KW):
                for s in range(pieces.shape[0]):
                    n, oh0, oh1 = pieces[s, 0], pieces[s, 1], pieces[s, 2]
                    plane = xq[n, c0 + c, (ki * dh) % sh, (kj * dw) % sw].reshape(Hq * Wq)
                    start = (oh0 + (ki * dh) // sh) * Wq + (kj * dw) // sw
                    dst = col[d0:d0 + (oh1 - oh0) * Wq]
                    d0 += (oh1 - oh0) * Wq
                    src = plane[start:]
                    for i in range(min(dst.shape[0], Hq * Wq - start)):
                        dst[i] = src[i]


def _conv_gemm_body(x, xq, w, bias, y, col, yw, bands, geo, mode, kind, a0, a1):
    """y (N, M, OH, OW) = act(conv(x (N, C, H, W), w (M, K)) + bias (M)) over the bands
    [bands[i, 0], bands[i, 1]) of flattened output positions (whole rows), for every group; xq
    is the phase-split image (WIDE only); col (T, >= K * widest band) and yw (T, >= Mg * widest
    band) are the threads' scratch (module docstring)."""
    N, C, H, W = x.shape
    M, K = w.shape
    OH, OW = geo[0], geo[1]
    ohw = OH * OW
    Cg = K // (geo[2] * geo[3])
    G, Mg = C // Cg, M // (C // Cg)
    T, P = col.shape[0], bands.shape[0]
    wq = xq.shape[5]
    if mode == WIDE:
        for nc in prange(N * C):
            n = nc // C
            phase_split(x[n, nc - n * C:nc - n * C + 1], xq[n, nc - n * C:nc - n * C + 1], geo[8], geo[9])
    xf, wf, yf = x.reshape(N * C * H * W), w.reshape(M * K), y.reshape(N * M * ohw)
    for t in prange(T):
        ct, yt = col[t], yw[t]
        for p in range(t, P * G, T):
            g = p // P
            q0, q1 = bands[p - g * P, 0], bands[p - g * P, 1]
            pieces = _pieces(q0, q1, OH, OW)
            cols = q1 - q0 if mode != WIDE else (q1 - q0) // OW * wq
            single = pieces.shape[0] == 1 and mode != WIDE
            src, ldb = ct, cols
            if mode == POINTWISE and single:
                src, ldb = xf[(q0 // ohw * C + g * Cg) * ohw + q0 % ohw:], ohw
            elif mode == WIDE:
                _im2col_wide(xq, g * Cg, K, ct, pieces, cols, geo)
            elif mode == SHIFT:
                _im2col_shift(x, g * Cg, K, ct, pieces, cols, geo)
            else:
                _im2col_narrow(x, g * Cg, K, ct, pieces, cols, geo)
            if single:  # straight into y, over the bias (BLAS then skips zeroing it)
                dst = yf[(q0 // ohw * M + g * Mg) * ohw + q0 % ohw:]
                _fill_rows(dst, ohw, cols, bias[g * Mg:(g + 1) * Mg])
                gemm(Mg, cols, K, 1.0, wf[g * Mg * K:], K, src, ldb, 1.0, dst, ohw)
                if kind != 0:
                    for m in range(Mg):
                        act_inplace(dst[m * ohw:m * ohw + cols], kind, a0, a1)
                continue
            gemm(Mg, cols, K, 1.0, wf[g * Mg * K:], K, src, ldb, 0.0, yt, cols)
            rw = wq if mode == WIDE else OW  # width of a row of the band's result
            for m in range(Mg):
                bm = bias[g * Mg + m]
                row = yt[m * cols:(m + 1) * cols]
                d0 = 0
                for s in range(pieces.shape[0]):  # copied out row by row, the WIDE extra columns dropped
                    n, oh0, oh1 = pieces[s, 0], pieces[s, 1], pieces[s, 2]
                    at = ((n * M + g * Mg + m) * OH + oh0) * OW
                    if rw == OW:
                        bias_act(row[d0:d0 + (oh1 - oh0) * OW], yf[at:at + (oh1 - oh0) * OW], bm, kind, a0, a1)
                    else:
                        for j in range(oh1 - oh0):
                            bias_act(row[d0 + j * rw:d0 + j * rw + OW], yf[at + j * OW:at + (j + 1) * OW], bm, kind,
                                     a0, a1)
                    d0 += (oh1 - oh0) * rw


conv_gemm = Twin(_conv_gemm_body)


@dataclass(frozen=True)
class GemmPlan:
    """How the GEMM path runs one conv with ``threads`` threads: the patch matrix's ``mode``,
    the ``bands`` of output positions (rows [q0, q1) of an int64 array), and the shapes of the
    threads' scratch (patch matrices, result blocks) and of the phase-split image (WIDE)."""

    mode: int
    threads: int
    bands: np.ndarray
    col_shape: tuple[int, int]
    yw_shape: tuple[int, int]
    xq_shape: tuple[int, ...]

    @staticmethod
    def of(x4, y4, w4, strides, dil, pads, groups: int, threads: int) -> GemmPlan:
        n, c, h, w = x4
        oh, ow = y4[2:]
        (kh, kw), (sh, sw) = w4[2:], strides
        k = w4[1] * kh * kw
        wq = ow + (kw - 1) * dil[1] // sw
        fits = {POINTWISE: (kh, kw) == (1, 1) and strides == (1, 1) and not any(pads),
                SHIFT: strides == (1, 1) and ow == w, WIDE: wq <= ow * (1 + _MAX_WASTE), NARROW: True}
        mode = next(m for m in _MODES if fits[m])
        xq = (n, c, sh, sw, oh + (kh - 1) * dil[0] // sh, wq) if mode == WIDE else (1, 1, 1, 1, 1, 1)
        bands = _bands(n, oh, ow, k, groups, threads)
        rows = int(np.max(bands[:, 1] - bands[:, 0])) // ow
        cols = rows * (wq if mode == WIDE else ow)
        return GemmPlan(mode, threads, bands, (threads, k * cols), (threads, w4[0] // groups * cols), xq)


def _bands(n: int, oh: int, ow: int, k: int, groups: int, threads: int) -> np.ndarray:
    """Bands of whole output rows: whole images when an image's patch matrix is below
    ``_BAND_BYTES``, else equal runs of rows of each image; at least ``threads`` tasks (bands x
    groups), and a multiple of ``threads`` where one is near."""
    ohw = oh * ow
    target = max(_BAND_BYTES // (4 * k), _MIN_COLS)
    want = -(-threads // groups)  # bands needed to give every thread a task
    if ohw <= target and n >= want:
        per = max(1, min(target // ohw, n // want))  # images per band
        for p in range(per, (per - 1) // 2, -1):
            if -(-n // p) * groups % threads == 0:
                per = p
                break
        return np.array([(i * ohw, min(n, i + per) * ohw) for i in range(0, n, per)], np.int64).reshape(-1, 2)
    nbi = min(oh, max(-(-ohw // target), -(-want // n)))  # bands per image
    nbi += next((e for e in range(threads) if n * groups * (nbi + e) % threads == 0 and nbi + e <= oh), 0)
    rows = -(-oh // nbi)
    bands = [(i * ohw + r * ow, i * ohw + min(oh, r + rows) * ow) for i in range(n) for r in range(0, oh, rows)]
    return np.array(bands, np.int64).reshape(-1, 2)


def workers(macs: int, threads: int, split: int) -> int:
    """Threads a conv or matmul of ``macs`` multiply-adds uses: all of them above ``split``."""
    return threads if macs >= split and threads > 1 else 1
