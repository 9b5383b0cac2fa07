"""BinaryConv's panel path: a band of output rows as a bit panel, counted by the register tile.

For a layer with one group (+-1 or ternary weights), a task takes a band of output rows of one image
and a run of output channels (whole 64-channel words). The band's P = rows x OW pixels are
gathered into ``panel[K, P]`` (binary_panel_gather.py): K = taps x WG input words per pixel,
or nwords(taps * Cin) with the taps' bits concatenated when Cin is not a multiple of 64, the
pixels of a word contiguous, zero bits for a tap outside the image. The register tile (binary_tile.py)
then counts ``acc[c, p] = sum_k popcount(panel[k, p] ^ w[k, c])`` and the output stage runs
channel by channel along the band's pixels, which are contiguous in the NCHW float output.

Zero padding stays exact: a tap t outside the image reads zero words, adding ``wpc[t, c]``
(the popcount of its weight words) to the count, while it should add nothing, so
``s = taps * Cin - 2 * acc + fix`` with
``fix[c, p] = -(outside taps of p) * Cin + 2 * sum_{t outside} wpc[t, c]``. Which taps are
outside depends on the pixel's column and on its row's class (the kernel rows outside the input:
3 classes for a 3x3 pad-1 layer), so the table made once per session (``panel_weights``) is
``base[c, r, ow] = taps * Cin + fix``, and the output stage takes every pixel in one pass,
``s = base[c, rcls[oh], ow] - 2 * acc`` (a separate pass over the border pixels cost more
than the rest of the output stage). A small image's table (up to WHOLE_TABLE_BYTES: Bi-Real
Net's 7x7 layers) has a row per output row instead, so that the output stage takes
a channel's band in one pass rather than a pass per row of 7 or 14 pixels. The output stage
prefetches the float output rows of the channel AHEAD further on: a layer whose output buffer
is not in the cache otherwise waits on every channel's lines.

Activations with exact zeros (``Sign(0) = 0``; their nonzero mask m has zeros at run time) are
split into two +-1 activations: ``a`` with the zeros as +1 (bits ``b & m``) and ``b`` with them
as -1 (bits ``(b | ~m)``, the unused tail bits kept 0), so that ``x = (a + b) / 2`` and
``s = s_a / 2 + s_b / 2 = K - popcount(a ^ w) - popcount(b ^ w)``: the panel holds both (2K
words, the weights twice), the same tile counts them, and ``s = base - acc`` with the same
table (an outside tap reads zero words in both halves).

Ternary weights (a weight mask wm, {-1, 0, +1}) count through it with the masked tile,
``acc = sum_k popcount((panel[k] ^ w[k]) & wm[k])``: a zero weight adds nothing, so per half
``s = M_c - 2 * acc`` with M_c the channel's nonzero weights, and with halves
``s = M_c - acc``. For +-1 weights M_c = taps * Cin, so one formula serves both:
``s = base[c, r, ow] - mult * acc`` (mult 2, or 1 with halves), ``base = sum_t wcnt[t, c] +
sum over the outside taps t of (2 * wpc[t, c] - wcnt[t, c])`` with wcnt a tap's nonzero
weights (Cin for +-1) and wpc the popcount of its -1 weights (an outside tap reads zero words:
it adds wpc[t, c] to acc, where it should add nothing to s).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Twin
from runtime.kernels.binary_common import BITS, NO_BITS, or_sign_planes, rule_flag, rule_of
from runtime.kernels.binary_panel_gather import gather, gather_dense
from runtime.kernels.binary_tile import LANES, MR, prefetch_write, tile_row, tile_weights

BAND_BYTES = 256 * 1024  # a band's panel and counts stay in the L2 cache
PANEL_PIXELS = 2 * LANES  # smaller outputs take the tiled path (binary_conv.py)
AHEAD = 2  # the output stage prefetches the float output rows of the channel this far ahead
WHOLE_TABLE_BYTES = 128 * 1024  # up to this size the border table has a row per output row
# (a bigger one, read cold from memory on every run, costs more than the passes it saves)


@njit(cache=True, inline="always")
def _span_float(b, a, yr, rr, has_r, mult, sc, bi) -> None:
    """yr = float32(b - mult * a) * sc + bi (+ rr) along one run of pixels."""
    if has_r:
        for p in range(a.shape[0]):
            yr[p] = np.float32(np.int32(b[p] - mult * a[p])) * sc + bi + rr[p]
    else:
        for p in range(a.shape[0]):
            yr[p] = np.float32(np.int32(b[p] - mult * a[p])) * sc + bi


@njit(cache=True, inline="always")
def _span_bits(b, a, pp, mult, rule, sh) -> None:
    """OR the rule's flag of s = b - mult * a at bit sh of pp along one run of pixels."""
    lo, hi, f_below, f_mid, f_above = rule
    for p in range(a.shape[0]):
        f = rule_flag(b[p] - mult * a[p], lo, hi, f_below, f_mid, f_above)
        pp[p] |= np.uint64(f & 1) << sh


@njit(cache=True, inline="always")
def _prefetch_rows(y3, r3, has_r, n, c, p0, np_) -> None:
    """Prefetch channel c's output (and residual) lines at pixels p0 .. p0 + np_ - 1 of image n."""
    at = (n * y3.shape[1] + c) * y3.shape[2] + p0
    for q in range(0, np_ + 15, 16):
        prefetch_write(y3, at + min(q, np_ - 1))
        if has_r:
            prefetch_write(r3, at + min(q, np_ - 1))


@njit(cache=True)
def _emit(acc, base, rcls, inner, mult, c0, c1, n, oh0, oh1, ow_, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r, bz,
          pk):
    """s = b - mult * acc for channels c0 .. c1 - 1 (rows of acc from 0) at the band's pixels
    (rows oh0 .. oh1 - 1, contiguous in acc's rows) of image n, b the channel's row
    base[c, rcls[oh]], or for runs of interior rows (rcls -1) its tiled interior row ``inner``,
    or for rows whose table rows follow one another (a whole-image table) those rows at once
    (long runs vectorise; a row at a time, rows of 7 to 56 pixels mostly do not), through the
    output stage (binary_common): y3 [N, C, OH*OW], yb3/ym3 [N, OH*OW, words], r3 the residual as
    y3. The bits of a word's 64 channels gather in the contiguous rows of ``pk`` [2, >= pixels]
    and are stored once per word (the task owns the whole word)."""
    bits = mode == BITS or bz != NO_BITS
    np_ = (oh1 - oh0) * ow_
    p0 = oh0 * ow_
    run = inner.shape[1] // ow_  # the most interior rows ``inner`` covers
    flat = base.reshape((base.shape[0], base.shape[1] * base.shape[2]))
    for i in range(c1 - c0):
        c = c0 + i
        a = acc[i]
        sh = np.uint64(c & 63)
        if (c & 63) == 0 or i == 0:
            pk[:, :np_] = 0
        if mode != BITS and i + AHEAD < c1 - c0:
            _prefetch_rows(y3, r3, has_r, n, c + AHEAD, p0, np_)
        yr = y3[n, c, p0:p0 + np_] if mode != BITS else y3[0, 0, :np_]
        rr = r3[n, c, p0:p0 + np_] if has_r else r3[0, 0, :np_]
        for plane in range(1 if mode != BITS else (2 if out_mask else 1)):
            rule = rule_of(table, c if mode == BITS else 0, plane)  # the float stage's table is a [8, 1] stand-in
            r0 = oh0
            while r0 < oh1:
                r1 = r0 + 1
                if rcls[r0] < 0:
                    while r1 < oh1 and r1 - r0 < run and rcls[r1] < 0:
                        r1 += 1
                    b = inner[c, :(r1 - r0) * ow_]
                else:  # rows whose table rows follow one another (every row with a whole-image table)
                    while r1 < oh1 and rcls[r1] == rcls[r0] + (r1 - r0):
                        r1 += 1
                    b = flat[c, rcls[r0] * ow_:(rcls[r0] + r1 - r0) * ow_]
                q0, q1 = (r0 - oh0) * ow_, (r1 - oh0) * ow_
                if mode != BITS:
                    _span_float(b, a[q0:q1], yr[q0:q1], rr[q0:q1], has_r, mult, scale[c], bias[c])
                else:
                    _span_bits(b, a[q0:q1], pk[plane, q0:q1], mult, rule, sh)
                r0 = r1
        if mode != BITS and bz != NO_BITS:
            or_sign_planes(yr, np_, bz, sh, pk)
        if bits and ((c & 63) == 63 or c == c1 - 1):
            q = c >> 6
            ybr = yb3[n, p0:p0 + np_]
            for p in range(np_):
                ybr[p, q] = pk[0, p]
            if out_mask:
                ymr = ym3[n, p0:p0 + np_]
                for p in range(np_):
                    ymr[p, q] = pk[1, p]


@Twin
def panel_conv(x, xm, masked, tail, wt, base, rcls, inner, wmasked, kk, geom, nbands, cb, tasks, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz):
    """x uint64 [N, Hx, Wx, WG] (one group) and, when ``masked``, its nonzero masks xm (tail: the
    valid bits of a pixel's words); wt the tile's weights of w [taps * WG, Cout] twice over
    (with their masks when ``wmasked``: ternary weights); base, rcls, inner the s of count 0
    per channel, row class and column, the row classes and the tiled interior rows, kk the
    words of a pixel's taps (``panel_weights``); geom as binary_conv's; ``nbands`` bands of
    output rows per image (band b: rows b * OH // nbands up to the next one's), ``cb`` output channels per task (a multiple of 64 unless it is all of them);
    the N x bands x channel runs are split into ``tasks`` runs; outputs as binary_conv's."""
    kh_, kw_, oh_, ow_ = geom[0], geom[1], geom[8], geom[9]
    wg = x.shape[3]
    n_ = x.shape[0]
    cout = base.shape[0]
    dense = kk != kh_ * kw_ * wg  # the taps' bits concatenated (``gather_dense``)
    band = -(-oh_ // nbands)  # the most rows of a band
    nch = -(-cout // cb)
    chunks = n_ * nbands * nch
    y3 = y.reshape((y.shape[0], y.shape[1], y.shape[2] * y.shape[3]))
    r3 = res.reshape((res.shape[0], res.shape[1], res.shape[2] * res.shape[3]))
    yb3 = yb.reshape((yb.shape[0], yb.shape[1] * yb.shape[2], yb.shape[3]))
    ym3 = ym.reshape((ym.shape[0], ym.shape[1] * ym.shape[2], ym.shape[3]))
    halves = 2 if masked else 1
    offs = np.arange(2 * kk) * (band * ow_)
    tasks = max(1, min(tasks, chunks))
    for task in prange(tasks):
        panel = np.empty((halves * kk, band * ow_), np.uint64)
        acc = np.empty((-(-cb // MR) * MR, band * ow_), np.int64)
        pk = np.empty((2, band * ow_), np.uint64)
        last = -1
        for chunk in range(task * chunks // tasks, (task + 1) * chunks // tasks):
            img_band = chunk // nch
            n = img_band // nbands
            b = img_band % nbands
            oh0 = b * oh_ // nbands
            oh1 = (b + 1) * oh_ // nbands
            c0 = (chunk % nch) * cb
            c1 = min(cout, c0 + cb)
            np_ = (oh1 - oh0) * ow_
            if img_band != last and dense:  # the panel of this band (a task's chunks of one band share it)
                gather_dense(x[n], xm[n] if masked else x[n], masked, tail, geom[10], kk, oh0, oh1, geom, panel)
            elif img_band != last:
                gather(x[n], xm[n] if masked else x[n], masked, tail, oh0, oh1, geom, panel)
                last = img_band
            tile_row(panel.reshape(-1), 0, offs, 0, halves * kk, wt, (c0 // MR) * 2 * kk * MR * (2 if wmasked else 1), -(-(c1 - c0) // MR), acc, np_,
                     wmasked)
            _emit(acc, base, rcls, inner, 3 - halves, c0, c1, n, oh0, oh1, ow_, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r, bz,
                  pk)


def band_rows(wshape: tuple, oh: int, ow: int) -> int:
    """Output rows of a band whose panel and counts fit BAND_BYTES, for weights [1, taps, WG, Cout]
    (with one thread; more threads cut more, shorter bands)."""
    _, taps, wg, cout = wshape
    return max(1, min(oh, BAND_BYTES // ((taps * wg + cout) * ow * 8)))


def panel_plan(w: np.ndarray, oh: int, ow: int, rows: int, threads: int) -> tuple[int, int, int]:
    """(bands per image, channels per task, tasks) for weights [1, taps, WG, Cout] and an output
    of ``rows`` images x oh x ow: bands whose panel and counts fit BAND_BYTES. With several
    threads the chunks (images x bands x channel runs) must split evenly over them, one chunk
    per task (a static split of unequal counts leaves a thread idle at the end): first by
    channel runs of whole 64-channel words, which keep the bands, and so the tile's rows, long;
    then by more bands, none shorter than two vectors of pixels (the tile's lanes full)."""
    _, taps, wg, cout = w.shape
    nbands = -(-oh // band_rows(w.shape, oh, ow))
    if threads <= 1:
        return nbands, cout, 1
    most = max(nbands, min(oh, oh * ow // PANEL_PIXELS))
    cb = cout

    def chunks() -> int:
        return rows * nbands * -(-cout // cb)

    while (chunks() < threads or chunks() % threads) and cb > 64:
        cb = max(64, -(-(cb // 2) // 64) * 64)
    while (chunks() < threads or chunks() % threads) and nbands < most:
        nbands += 1
    return nbands, cb, chunks()


def panel_weights(w: np.ndarray, geom: tuple, hx: int, wx: int, wm: np.ndarray | None = None,
                  dense: tuple | None = None) -> tuple:
    """From the general path's weights ``[1, taps, WG, Cout]`` (and, ternary, their nonzero mask
    ``wm``) and binary_conv's geometry (input hx x wx): the tile's weights (the K words twice: a
    masked panel's halves; with their masks when ``wm``); the table ``base[c, r, ow]`` of the s
    of count 0, ``base = k0c[c] + fix`` (module docstring), and ``rcls[oh]`` the row class r of
    output row oh (rows whose taps leave the input at the same kernel rows share one), -1 for
    the interior rows, whose row of base is ``inner[c]`` tiled over a band's rows (a small table
    has a row per output row instead, ``_border_table``); whether the
    weights carry masks; the words of a pixel's taps in the panel. ``dense``: the weights (and
    mask) with the taps' bits concatenated, ``[1, nwords(taps * Cin), Cout]``, for the tile when
    that takes fewer words (``gather_dense``); the counts per tap come from ``w`` either way."""
    _, taps, wg, cout = w.shape
    kh, kw, sh, sw, dh, dw, pt, pl, oh_, ow_, cg = geom
    neg = w[0] if wm is None else w[0] & wm[0]
    wpc = np.zeros((taps, cout), np.int64)
    wcnt = np.full((taps, cout), cg, np.int64)
    if wm is not None:
        wcnt[:] = 0
    for b in range(64):
        wpc += ((neg >> np.uint64(b)) & np.uint64(1)).sum(axis=1, dtype=np.int64)
        if wm is not None:
            wcnt += ((wm[0] >> np.uint64(b)) & np.uint64(1)).sum(axis=1, dtype=np.int64)
    base, rcls, inner = _border_table(wpc, wcnt, geom, hx, wx, band_rows(w.shape, oh_, ow_))
    wk, mk = (w.reshape(1, taps * wg, cout), None if wm is None else wm.reshape(1, taps * wg, cout))
    if dense is not None and dense[0].shape[1] < taps * wg:
        wk, mk = dense
    w2 = np.concatenate([wk] * 2, axis=1)  # both halves of a masked panel
    m2 = None if mk is None else np.concatenate([mk] * 2, axis=1)
    return tile_weights(np.ascontiguousarray(w2), m2), base, rcls, inner, wm is not None, wk.shape[1]


def _border_table(wpc: np.ndarray, wcnt: np.ndarray, geom: tuple, hx: int, wx: int, rows: int) -> tuple:
    """(base, rcls, inner) of ``panel_weights`` from the per-tap popcounts of the -1 weights
    ``wpc`` and the nonzero weights ``wcnt`` [taps, Cout], for bands of up to ``rows`` rows.
    A table of up to WHOLE_TABLE_BYTES gets a row per output row (rcls[oh] = oh, no interior
    rows): the output stage then runs each channel's band in one pass, which the few pixels
    per row of a small image need (a pass per row costs more than its pixels there)."""
    kh, kw, sh, sw, dh, dw, pt, pl, oh_, ow_, _ = geom
    taps, cout = wpc.shape
    ih = np.arange(oh_)[:, None] * sh - pt + np.arange(kh)[None, :] * dh  # [OH, kh]
    iw = np.arange(ow_)[:, None] * sw - pl + np.arange(kw)[None, :] * dw  # [OW, kw]
    rows_in = (ih >= 0) & (ih < hx)
    _, first, rcls = np.unique(rows_in, axis=0, return_index=True, return_inverse=True)
    out = ~(rows_in[first][:, None, :, None] & ((iw >= 0) & (iw < wx))[None, :, None, :])  # [R, OW, kh, kw]
    fix = out.reshape(len(first), ow_, taps).astype(np.int64) @ (2 * wpc - wcnt)  # [R, OW, Cout]
    base = np.ascontiguousarray((fix + wcnt.sum(axis=0)).transpose(2, 0, 1)).astype(np.int32)
    rcls = rcls.reshape(-1).astype(np.int64)
    interior = rows_in.all(axis=1)
    inner = np.zeros((cout, ow_), np.int32)
    if base.nbytes * oh_ // len(first) <= WHOLE_TABLE_BYTES:
        return np.ascontiguousarray(base[:, rcls]), np.arange(oh_, dtype=np.int64), inner
    if interior.any():
        inner = np.ascontiguousarray(np.tile(base[:, rcls[interior][0]], (1, rows)))
        rcls[interior] = -1
    return base, rcls, inner
