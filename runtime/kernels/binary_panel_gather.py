"""The panel of BinaryConv's panel path (binary_conv_panel.py): a band of output rows' input words.

``panel[k, p]`` is word k of the bits output pixel p of the band reads, the pixels of a word
contiguous, so the register tile (binary_tile.py) loads LANES pixels of one word at once.
Two layouts of a pixel's words (bit convention: runtime/bitpack.py):

- per tap (``gather``): K = taps x WG words, tap t's WG = nwords(Cin) words at rows t * WG ..;
- concatenated (``gather_dense``), when Cin is not a multiple of 64: the taps' Cin-bit strings
  one after another, tap t's channels at bit t * Cin, K = nwords(taps * Cin) words (5 instead of
  9 for a 3x3 layer of 32 channels). Each input word is cut to its valid bits and shifted into
  place (two rows where it straddles a word boundary).

Either way a tap outside the image gives zero bits (the border table of binary_conv_panel.py
takes their count back), and with an activation mask (exact zeros) the panel holds two halves,
rows K .. 2K - 1 being the second: the words with the zeros as +1 (``x & m``), then as -1
(``(x | ~m) & tail``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def tap_columns(kj, dw, pl, sw, ow_, wx):
    """(d, lo, hi) for kernel column kj: output column ow reads input column ow * sw + d, which
    is inside the image (0 .. wx - 1) exactly for lo <= ow < hi."""
    d = kj * dw - pl
    lo = 0 if d >= 0 else min(ow_, (sw - 1 - d) // sw)
    return d, lo, max(lo, min(ow_, (wx - 1 - d) // sw + 1))


@njit(cache=True)
def gather(x, xm, masked, tail, oh0, oh1, geom, panel) -> None:
    """panel[(t * WG + j), p] = word j of the pixel tap t of band pixel p reads (rows oh0 ..
    oh1 - 1), 0 outside the image; when ``masked``, that word with its zeros as +1 (``x & m``)
    and, K rows further, as -1 (``(x | ~m) & tail``)."""
    kh_, kw_, sh, sw, dh, dw, pt, pl, ow_ = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], geom[9]
    hx, wx, wg = x.shape
    kk = kh_ * kw_ * wg
    contiguous = wg == 1 and sw == 1
    xr = x.reshape((hx, wx * wg))  # x[ih, :, 0] as a contiguous row when wg == 1
    for ki in range(kh_):
        for kj in range(kw_):
            d, lo, hi = tap_columns(kj, dw, pl, sw, ow_, wx)
            for j in range(wg):
                k = (ki * kw_ + kj) * wg + j
                row = panel[k]
                row2 = panel[k + kk] if masked else panel[k]
                tj = tail[j]
                for oh in range(oh0, oh1):
                    ih = oh * sh - pt + ki * dh
                    dst = row[(oh - oh0) * ow_:(oh - oh0 + 1) * ow_]
                    dst2 = row2[(oh - oh0) * ow_:(oh - oh0 + 1) * ow_]
                    if ih < 0 or ih >= hx:
                        dst[:] = 0
                        dst2[:] = 0
                        continue
                    for ow in range(lo):
                        dst[ow] = 0
                        dst2[ow] = 0
                    for ow in range(hi, ow_):
                        dst[ow] = 0
                        dst2[ow] = 0
                    s0 = lo * sw + d
                    src = x[ih, :, j]
                    if masked:
                        msk = xm[ih, :, j]
                        for i in range(hi - lo):
                            v, m = src[s0 + i * sw], msk[s0 + i * sw]
                            dst[lo + i] = v & m
                            dst2[lo + i] = (v | ~m) & tj
                    elif contiguous:  # one word per pixel, stride 1: a plain copy, which vectorises (a loop:
                        xrow = xr[ih, s0:s0 + hi - lo]  # a slice assignment goes through Numba's generic copy)
                        drow = dst[lo:hi]
                        for i in range(hi - lo):
                            drow[i] = xrow[i]
                    else:  # the row as one contiguous array from the first word read: indices from 0, no
                        xrow = xr[ih, s0 * wg + j:]  # strided view to index per word
                        drow = dst[lo:hi]
                        for i in range(hi - lo):
                            drow[i] = xrow[i * (sw * wg)]


@njit(cache=True)
def gather_dense(x, xm, masked, tail, cg, kk, oh0, oh1, geom, panel) -> None:
    """As ``gather`` with the taps' bits concatenated (``kk = nwords(taps * cg)`` words per pixel,
    tap t's cg channels at bit t * cg): input word j of tap t goes to bit (t * cg + j * 64) % 64 of
    panel row (t * cg + j * 64) // 64 and, shifted down, of the next row; a tap outside the image
    leaves its bits 0. Words are cut to ``tail`` first, so no bit spills into the next tap."""
    kh_, kw_, sh, sw, dh, dw, pt, pl, ow_ = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6], geom[7], geom[9]
    hx, wx, wg = x.shape
    np_ = (oh1 - oh0) * ow_
    panel[:, :np_] = 0
    for ki in range(kh_):
        for kj in range(kw_):
            d, lo, hi = tap_columns(kj, dw, pl, sw, ow_, wx)
            for j in range(wg):
                pos = (ki * kw_ + kj) * cg + j * 64
                k = pos >> 6
                off = np.uint64(pos & 63)
                spill = (pos & 63) != 0 and k + 1 < kk
                back = np.uint64(64 - (pos & 63))
                tj = tail[j]
                for oh in range(oh0, oh1):
                    ih = oh * sh - pt + ki * dh
                    if ih < 0 or ih >= hx:
                        continue
                    q0 = (oh - oh0) * ow_ + lo
                    q1 = (oh - oh0) * ow_ + hi
                    s0 = lo * sw + d
                    src = x[ih, :, j]
                    msk = xm[ih, :, j]
                    for half in range(2 if masked else 1):
                        r0 = panel[half * kk + k, q0:q1]
                        r1 = panel[half * kk + k + 1 if spill else half * kk + k, q0:q1]
                        for i in range(q1 - q0):
                            v = src[s0 + i * sw]
                            if masked:
                                m = msk[s0 + i * sw]
                                v = v & m if half == 0 else v | ~m
                            v &= tj
                            r0[i] |= v << off
                            if spill:
                                r1[i] |= v >> back
