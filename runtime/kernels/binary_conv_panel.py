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
than the rest of the output stage; binary_conv_stage.py). A small image's table (up to
WHOLE_TABLE_BYTES: Bi-Real Net's 7x7 layers) has a row per output row instead, so that the output
stage takes a channel's band in one pass rather than a pass per row of 7 or 14 pixels
(``binary_conv_stage.table_layout``).

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
from runtime.kernels.binary_conv_stage import band_runs, band_views, emit_band, table_layout
from runtime.kernels.binary_panel_gather import gather, gather_dense
from runtime.kernels.binary_tile import LANES, MR, tile_row, tile_weights

BAND_BYTES = 256 * 1024  # a band's panel and counts stay in the L2 cache
PANEL_PIXELS = 2 * LANES  # smaller outputs take the tiled path (binary_conv.py)


@Twin
def panel_conv(x, xm, masked, tail, wt, tb, rcls, irun, wmasked, kk, geom, nbands, cb, tasks, mode, out_mask, scale, bias, table, y, yb, ym,
               res, has_r, bz):
    """x uint64 [N, Hx, Wx, WG] (one group) and, when ``masked``, its nonzero masks xm (tail: the
    valid bits of a pixel's words); wt the tile's weights of w [taps * WG, Cout] twice over
    (with their masks when ``wmasked``: ternary weights); tb, rcls, irun the border table (the s
    of count 0 per channel and table column), the row classes and the interior rows the table's
    tiled interior row covers, kk the words of a pixel's taps (``panel_weights``); geom as
    binary_conv's; ``nbands`` bands of output rows per image (band b: rows b * OH // nbands up to
    the next one's), ``cb`` output channels per task (a multiple of 64 unless it is all of them);
    the N x bands x channel runs are split into ``tasks`` runs, each in a function of its own
    (``_panel_task``); outputs as binary_conv's; R (``res``) may be the float output's own
    buffer (``BinaryConv.overwritable_input``)."""
    n_ = x.shape[0]
    band = -(-geom[8] // nbands)  # the most rows of a band
    chunks = n_ * nbands * -(-tb.shape[0] // cb)
    y3, r3, yb3, ym3 = band_views(y, res, yb, ym)
    tasks = max(1, min(tasks, chunks))
    for task in prange(tasks):
        _panel_task(x, xm, masked, tail, wt, tb, rcls, irun, wmasked, kk, geom, nbands, band, cb, task * chunks // tasks,
                    (task + 1) * chunks // tasks, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r, bz)


@njit(cache=True)
def _panel_task(x, xm, masked, tail, wt, tb, rcls, irun, wmasked, kk, geom, nbands, band, cb, chunk0, chunk1, mode, out_mask,
                scale, bias, table, y3, yb3, ym3, r3, has_r, bz):
    """Chunks chunk0 .. chunk1 - 1 of ``panel_conv`` (a task's work, in a function of its own)."""
    kh_, kw_, oh_, ow_ = geom[0], geom[1], geom[8], geom[9]
    cout = tb.shape[0]
    dense = kk != kh_ * kw_ * x.shape[3]  # the taps' bits concatenated (``gather_dense``)
    nch = -(-cout // cb)
    halves = 2 if masked else 1
    offs = np.arange(2 * kk) * (band * ow_)
    ioff = tb.shape[1] - irun * ow_
    panel = np.empty((halves * kk, band * ow_), np.uint64)
    pk = np.empty((2, band * ow_), np.uint64)
    fl = np.empty((2, band * ow_), np.uint32)
    runs = np.empty((band, 3), np.int64)
    acc = np.empty((-(-cb // MR) * MR, band * ow_), np.int32)  # counts < 2^31: half the bytes of int64 through the cache
    last = -1
    for chunk in range(chunk0, chunk1):
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
        nr = band_runs(rcls, oh0, oh1, ow_, irun, ioff, runs)
        tile_row(panel.reshape(-1), 0, offs, 0, halves * kk, wt, (c0 // MR) * 2 * kk * MR * (2 if wmasked else 1), -(-(c1 - c0) // MR),
                 acc, np_, wmasked)
        emit_band(acc, tb, runs, nr, 3 - halves, c0, c1, n, oh0 * ow_, np_, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r,
                  bz, pk, fl)


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
    masked panel's halves; with their masks when ``wm``); the border table ``tb[c, r * OW + ow]``
    (``base[c, r, ow]`` of the module docstring, its rows one after another), ``rcls[oh]`` the
    row class r of output row oh (rows whose taps leave the input at the same kernel rows share
    one), -1 for the interior rows, and ``irun``: the table's last irun rows are the interior
    row tiled, covering that many interior rows at once (a small table has a row per output row
    instead, ``_border_table``); whether the
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
    tb, rcls, irun = _border_table(wpc, wcnt, geom, hx, wx, band_rows(w.shape, oh_, ow_))
    wk, mk = (w.reshape(1, taps * wg, cout), None if wm is None else wm.reshape(1, taps * wg, cout))
    if dense is not None and dense[0].shape[1] < taps * wg:
        wk, mk = dense
    w2 = np.concatenate([wk] * 2, axis=1)  # both halves of a masked panel
    m2 = None if mk is None else np.concatenate([mk] * 2, axis=1)
    return tile_weights(np.ascontiguousarray(w2), m2), tb, rcls, irun, wm is not None, wk.shape[1]


def _border_table(wpc: np.ndarray, wcnt: np.ndarray, geom: tuple, hx: int, wx: int, rows: int) -> tuple:
    """(tb, rcls, irun) of ``panel_weights`` from the per-tap popcounts of the -1 weights
    ``wpc`` and the nonzero weights ``wcnt`` [taps, Cout], for bands of up to ``rows`` rows,
    laid out by ``binary_conv_stage.table_layout``."""
    kh, kw, sh, sw, dh, dw, pt, pl, oh_, ow_, _ = geom
    taps, cout = wpc.shape
    ih = np.arange(oh_)[:, None] * sh - pt + np.arange(kh)[None, :] * dh  # [OH, kh]
    iw = np.arange(ow_)[:, None] * sw - pl + np.arange(kw)[None, :] * dw  # [OW, kw]
    rows_in = (ih >= 0) & (ih < hx)
    _, first, rcls = np.unique(rows_in, axis=0, return_index=True, return_inverse=True)
    out = ~(rows_in[first][:, None, :, None] & ((iw >= 0) & (iw < wx))[None, :, None, :])  # [R, OW, kh, kw]
    fix = out.reshape(len(first), ow_, taps).astype(np.int64) @ (2 * wpc - wcnt)  # [R, OW, Cout]
    base = np.ascontiguousarray((fix + wcnt.sum(axis=0)).transpose(2, 0, 1)).astype(np.int32)
    return table_layout(base, rcls, rows_in.all(axis=1), rows)
