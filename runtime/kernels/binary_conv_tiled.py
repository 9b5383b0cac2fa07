"""BinaryConv's tiled path: one output row gathered into bit rows, then a plain XOR-popcount GEMM.

For the grouped layers with +-1 weights (one group takes the panel path, grouped ternary weights
the general kernel, binary_conv.py), an output row of
OW pixels is first gathered into ``cols[OW, K]``: the K = taps x WG input words each pixel's
taps read, in tap order, a word of zeros for a tap outside the image. The popcounts are then
``pc[p, c] = sum_k popcount(cols[p, k] ^ w[k, c])`` with the weights laid out ``[K, Cout_g]``:
for one input word the innermost loop runs over contiguous output channels, which LLVM turns
into the widest popcount the CPU has (``vpopcntq`` on AVX-512 VPOPCNTDQ, a nibble-table
``pshufb`` popcount on AVX2, ``cnt`` on NEON), two output pixels sharing each weight load and
nothing else in the loop (no tap bounds): the loop of the bare tile (benchmarks/xnor_tile.py).

Zero padding stays exact: a tap outside the image reads zero words, so it adds
``popcount(0 ^ w_t,c) = wpc[t, c]`` (the popcount of that tap's weights of channel c) which is
subtracted again for the border pixels, and it is not counted among the valid taps ``nv[p]``;
the integer ``s = nv[p] * Cin_g - 2 * pc[p, c]`` is then the one of the general path and goes
through the same output stage (binary_common.emit_row).

An activation with exact zeros (its nonzero mask has zeros) gathers its mask words the same way
(0 outside the image, so no correction) and counts ``popcount((x ^ w) & m)``, with
``s = nv[p] - 2 * pc[p, c]`` where nv[p] is then the number of nonzero activations p's taps read.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.bitpack import popcount
from runtime.kernels.base import Twin
from runtime.kernels.binary_common import clear_row_words, emit_row, row_task


@njit(cache=True)
def _gather(x, xm, masked, oh, geom, cols, mcols, nv) -> bool:
    """cols[p] = the words of output pixel p's taps in row oh (zeros outside the image), nv[p] the
    number of its valid taps; whether any tap of the row falls outside. With ``masked`` the
    activation's nonzero masks go to mcols the same way (zeros outside) and nv[p] counts the
    nonzero activations the pixel's taps read instead."""
    kh_, kw_, sh, sw, dh, dw, pt, pl = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    hx, wx, wg = x.shape
    border = False
    for p in range(cols.shape[0]):
        k = 0
        valid = 0
        count = 0
        for kh in range(kh_):
            ih = oh * sh - pt + kh * dh
            for kw in range(kw_):
                iw = p * sw - pl + kw * dw
                if ih < 0 or ih >= hx or iw < 0 or iw >= wx:
                    for j in range(wg):
                        cols[p, k + j] = 0
                        if masked:
                            mcols[p, k + j] = 0
                else:
                    for j in range(wg):
                        cols[p, k + j] = x[ih, iw, j]
                    if masked:
                        for j in range(wg):
                            m = xm[ih, iw, j]
                            mcols[p, k + j] = m
                            count += popcount(m)
                    valid += 1
                k += wg
        nv[p] = count if masked else valid
        border |= valid < kh_ * kw_
    return border


@njit(cache=True)
def _popcounts_masked(cols, mcols, w, c0, c1, pc) -> None:
    """pc[p, j] = sum_k popcount((cols[p, k] ^ w[k, c0 + j]) & mcols[p, k]), as _popcounts. Kept
    apart from it: one function with the mask as a flag ran the unmasked layers 30% slower."""
    p = 0
    while p < cols.shape[0]:
        two = p + 1 < cols.shape[0]
        a0 = pc[p]
        a1 = pc[p + 1] if two else pc[p]
        for j in range(a0.shape[0]):
            a0[j] = 0
            a1[j] = 0
        q = p + 1 if two else p
        for k in range(cols.shape[1]):
            x0, m0 = cols[p, k], mcols[p, k]
            x1, m1 = cols[q, k], mcols[q, k] if two else np.uint64(0)  # a lone last pixel: a1 is a0, add 0
            wr = w[k, c0:c1]
            for j in range(wr.shape[0]):
                v = wr[j]
                a0[j] += popcount((x0 ^ v) & m0)
                a1[j] += popcount((x1 ^ v) & m1)
        p += 2


@njit(cache=True)
def _popcounts(cols, w, c0, c1, pc) -> None:
    """pc[p, j] = sum_k popcount(cols[p, k] ^ w[k, c0 + j]), two pixels per pass sharing each
    weight load (measured against one and four: benchmarks/bench_binary_conv_paths.py). The
    weights are read through one contiguous row view per word (a 2-D slice of channels would
    lose Numba's C layout, and an index LLVM cannot prove non-negative keeps Numba's wraparound:
    neither vectorises)."""
    p = 0
    while p < cols.shape[0]:
        two = p + 1 < cols.shape[0]
        a0 = pc[p]
        a1 = pc[p + 1] if two else pc[p]
        for j in range(a0.shape[0]):
            a0[j] = 0
            a1[j] = 0
        if two:
            for k in range(cols.shape[1]):
                x0 = cols[p, k]
                x1 = cols[p + 1, k]
                wr = w[k, c0:c1]
                for j in range(wr.shape[0]):
                    v = wr[j]
                    a0[j] += popcount(x0 ^ v)
                    a1[j] += popcount(x1 ^ v)
        else:
            for k in range(cols.shape[1]):
                x0 = cols[p, k]
                wr = w[k, c0:c1]
                for j in range(wr.shape[0]):
                    a0[j] += popcount(x0 ^ wr[j])
        p += 2


@njit(cache=True)
def _unborder(oh, geom, hx, wx, wpc, pc, nv) -> None:
    """Take the zero words of the taps outside the image back out of pc (border pixels only)."""
    kh_, kw_, sh, sw, dh, dw, pt, pl = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7]
    taps = kh_ * kw_
    for p in range(pc.shape[0]):
        if nv[p] == taps:
            continue
        for kh in range(kh_):
            ih = oh * sh - pt + kh * dh
            for kw in range(kw_):
                iw = p * sw - pl + kw * dw
                if ih < 0 or ih >= hx or iw < 0 or iw >= wx:
                    t = kh * kw_ + kw
                    for j in range(pc.shape[1]):
                        pc[p, j] -= wpc[t, j]


@Twin
def tiled_conv(x, xm, masked, w, wpc, geom, cb, tasks, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz):
    """x: uint64 [G, N, Hx, Wx, WG] and, when ``masked`` (1), its nonzero masks xm (a zero
    activation counts for nothing: s = popcount(m) - 2 popcount((x ^ w) & m)); w: uint64
    [G, taps * WG, Cout_g]; wpc: int64 [G, taps, Cout_g], the popcount of each tap's weight
    words; ``tasks``: runs of whole (row, channel block) chunks; the rest as
    binary_conv._binary_conv."""
    oh_, ow_, cg = geom[8], geom[9], geom[10]
    g_, n_, hx, wx = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    coutg = w.shape[2]
    nblk = (coutg + cb - 1) // cb
    chunks = n_ * oh_ * nblk
    tasks = max(1, min(tasks, chunks))
    for task in prange(tasks):  # buffers once per task, not once per row: tiny layers pay for them
        cols = np.empty((ow_, w.shape[1]), np.uint64)
        mcols = np.empty((ow_ if masked else 1, w.shape[1]), np.uint64)
        pcbuf = np.empty(ow_ * cb, np.int64)
        nv = np.empty(ow_, np.int64)
        sbuf = np.empty(3 * cb, np.int64)
        for chunk in range(task * chunks // tasks, (task + 1) * chunks // tasks):
            n, oh, c0, c1 = row_task(chunk, nblk, oh_, coutg, cb)
            pc = pcbuf[:ow_ * (c1 - c0)].reshape((ow_, c1 - c0))
            scratch = sbuf[:3 * (c1 - c0)].reshape((3, c1 - c0))
            clear_row_words(mode, bz, out_mask, g_, coutg, c0, c1, n, oh, yb, ym)
            for g in range(g_):
                border = _gather(x[g, n], xm[g, n] if masked else xm[0, 0], masked, oh, geom, cols, mcols, nv)
                if masked:  # the taps outside read mask 0: no correction; s = nv - 2 pc (cg = 1 below)
                    _popcounts_masked(cols, mcols, w[g], c0, c1, pc)
                else:
                    _popcounts(cols, w[g], c0, c1, pc)
                    if border:
                        _unborder(oh, geom, hx, wx, wpc[g, :, c0:c1], pc, nv)
                emit_row(pc, pc, nv, np.int64(0), np.int64(1) if masked else cg, g * coutg + c0, n, oh, mode,
                         out_mask, scale, bias, table, y, yb, ym, res, has_r, bz, scratch[0], scratch[1], scratch[2])


def tiled_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the general path's weights ``[G, taps, WG, Cout_g]``: ``[G, taps * WG, Cout_g]`` and
    the per-tap popcounts ``[G, taps, Cout_g]``."""
    g, taps, wg, og = w.shape
    counts = np.zeros((g, taps, og), np.int64)
    for b in range(64):
        counts += ((w >> np.uint64(b)) & np.uint64(1)).sum(axis=2, dtype=np.int64)
    return np.ascontiguousarray(w.reshape(g, taps * wg, og)), counts
