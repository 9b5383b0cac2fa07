"""The narrow path of bnnc.BinaryConv: input groups of few channels.

The general kernel (binary_conv.py) XORs one ``nwords(Cin_g)``-word input pixel per tap and runs
its inner loop over output channels. With 16 or 32 input channels most of each 64-bit word is
padding, and with few output channels the inner loop is too short to vectorise well. Here:

- Merged rows: the ``kw`` taps of one kernel row, for output column ``ow`` and input row ``ih``,
  read pixels ``ow*sw - pl + kj*dw`` (kj = 0 .. kw-1). Their ``Cin_g`` channel bits, concatenated
  (tap kj at bit ``kj*Cin_g``), make one merged row of ``kw*Cin_g`` bits, built once per run
  (``merge_rows``) into ``xm[G, N, Hx, WG, OW]``: a kernel row is one tap of
  ``WG = nwords(kw*Cin_g)`` words instead of ``kw`` taps of ``nwords(Cin_g)`` words. Weights are
  merged the same way once per session, ``w[G, kh, WG, Cout_g]``.
- The register tile (binary_tile.py) counts an output row, its inner loop over output columns
  (contiguous merged rows) with one weight word broadcast:
  ``acc[co, ow] += popcount(xm[.., wd, ow] ^ w[ki, wd, co])``. A task takes a band of output
  rows of one image (``band_rows``: its counts in the L1 cache), their counts side by side, and
  runs the output stage over the whole band at once (binary_conv_stage.emit_band): a channel's
  pixels of the band are contiguous in the NCHW float output, where a pass per row of 8 to 32
  pixels cost 3-4 times the tile (the stage's set-up per channel and row).
- Padding: with ``pad_value`` +-1 the merged rows (and extra rows above and below) hold that
  value, so every tap is valid. With zero padding, rows outside the image are skipped, and a
  merged row that crosses the left or right border holds +1 bits (0) for the pixels outside;
  their contribution is taken back exactly: for the set S of outside taps, ``s`` over the valid
  bits is ``kw*Cin_g - 2*popcount + (2*c_w - |S|*Cin_g)``, c_w the count of -1 weights in S. Both
  terms beside the popcount go into a border table made once per session (as the panel path's:
  a row per class of output rows, binary_conv_stage.table_layout), so ``s = tb - 2 * acc``.

- Exact zeros (``Sign(0) = 0``): the activation's nonzero mask is merged the same way (pixels
  outside the image get mask 0 under zero padding), and ``s = popcount(m) - 2 popcount((x ^ w) &
  m)``; the count is the same for every output channel, so it is taken once per row. Ternary
  weights (a weight mask) take the panel path or the general kernel (binary_conv.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.bitpack import nwords, pack_bits, popcount
from runtime.codegen import Expr
from runtime.kernels.base import Twin, task_threads
from runtime.kernels.binary_common import conv_work
from runtime.kernels.binary_conv_stage import band_runs, band_views, emit_band, table_layout
from runtime.kernels.binary_tile import MR, tile_row, tile_weights
from runtime.kernels.narrow_emit import emit_merge_rows, emittable
from runtime.threads import current_threads

_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
BAND_COUNTS = 8192  # a band's counts: 32 KB of int32, in the L1 or L2 cache beside the rows it reads


@njit(cache=True, inline="always")
def _take(row, start, count):
    """``count`` (1 .. 64) bits of the word row ``row`` from bit ``start``, in the low bits."""
    q = start >> 6
    off = start & 63
    v = row[q] >> np.uint64(off)
    if off != 0 and q + 1 < row.shape[0]:
        v |= row[q + 1] << np.uint64(64 - off)
    if count < 64:
        v &= (np.uint64(1) << np.uint64(count)) - np.uint64(1)
    return v


@Twin
def merge_rows(x, cg, kw, sw, dw, pl, ptop, fill, out):
    """out[g, n, ihp, :, ow] = the merged row of input row ``ihp - ptop``, output column ow:
    for tap kj, bits g*cg .. g*cg + cg - 1 of pixel x[n, ih, ow*sw - pl + kj*dw] at bit kj*cg,
    or ``cg`` bits of ``fill`` (0 or all ones) where that pixel is outside x."""
    n_, h_, w_ = x.shape[0], x.shape[1], x.shape[2]
    g_, _, hp, _, ow_ = out.shape
    whole = g_ == 1 and cg <= 64  # a pixel's first word is its whole channel set, tail bits 0
    x3 = x.reshape((n_, h_, w_ * x.shape[3]))
    unit = whole and x.shape[3] == 1 and sw == 1  # that word read from a contiguous row, in vectors
    for r in prange(g_ * n_ * hp):
        ihp = r % hp
        q = r // hp
        n = q % n_
        g = q // n_
        ih = ihp - ptop
        o = out[g, n, ihp]
        o[:] = 0
        xr = x[n, min(max(ih, 0), h_ - 1)]
        for kj in range(kw):
            d = kj * dw - pl  # column ow reads pixel ow*sw + d
            lo, hi = 0, 0  # the columns whose pixel is inside x
            if 0 <= ih < h_:
                lo = 0 if d >= 0 else min(ow_, (sw - 1 - d) // sw)
                hi = max(lo, min(ow_, (w_ - 1 - d) // sw + 1))
            done = 0
            while done < cg:
                cnt = min(64, cg - done)
                pos = kj * cg + done
                wq = pos >> 6
                off = pos & 63
                spill = off != 0 and off + cnt > 64
                sl = np.uint64(off)
                sr = np.uint64(64 - off if spill else 0)
                fv = fill if cnt == 64 else fill & ((np.uint64(1) << np.uint64(cnt)) - np.uint64(1))
                # 0-based slices: a possibly negative index would cost a wraparound check that
                # keeps LLVM from vectorizing (runtime/kernels/nn.py)
                dst = o[wq, lo:hi]
                nxt = o[wq + 1 if spill else wq, lo:hi]
                if unit:
                    src1 = x3[n, min(max(ih, 0), h_ - 1), lo + d:hi + d]  # (empty when ih is outside)
                    for i in range(hi - lo):
                        dst[i] |= src1[i] << sl
                    if spill:
                        for i in range(hi - lo):
                            nxt[i] |= src1[i] >> sr
                elif whole:
                    src = xr[lo * sw + d:, 0]
                    for i in range(hi - lo):
                        dst[i] |= src[i * sw] << sl
                    if spill:
                        for i in range(hi - lo):
                            nxt[i] |= src[i * sw] >> sr
                elif cg == 1:  # depthwise: one bit of each pixel, no spill
                    src = xr[lo * sw + d:, g >> 6]
                    gb = np.uint64(g & 63)
                    for i in range(hi - lo):
                        dst[i] |= ((src[i * sw] >> gb) & np.uint64(1)) << sl
                else:
                    for i in range(hi - lo):
                        v = _take(xr[(lo + i) * sw + d], g * cg + done, cnt)
                        dst[i] |= v << sl
                        if spill:
                            nxt[i] |= v >> sr
                if fv != 0:  # the columns whose pixel is outside x: [0, lo) and [hi, ow_)
                    for c in range(ow_ - (hi - lo)):
                        cc = c if c < lo else c + hi - lo
                        o[wq, cc] |= fv << sl
                        if spill:
                            o[wq + 1, cc] |= fv >> sr
                done += cnt


@Twin
def narrow_conv(xm, mm, masked, w, wt, offs, tb, rcls, irun, geom, nbands, tasks, mode, out_mask, scale, bias, table, y, yb, ym,
                res, has_r, bz):
    """xm uint64 [G, N, Hx, WG, OW] merged rows, mm their merged nonzero masks (when ``masked``:
    s = popcount(m) - 2 popcount((x ^ w) & m), and outside pixels, mask 0, count for nothing);
    w uint64 [G, kh, WG, Cout_g] merged weights, wt the same as the register tile's
    (binary_tile.py), offs[ki * WG + wd] where word wd of kernel row ki starts from the first
    row's (the unmasked counts go through the tile); tb, rcls, irun the border table of the
    unmasked counts (``NarrowPlan``; binary_conv_stage.table_layout); geom: (kh, sh, dh, pt, OH,
    bits of a merged row); ``nbands`` bands of output rows per image, the N x bands chunks split
    into ``tasks`` runs, each in a function of its own (``_narrow_task``); outputs as
    binary_conv's (res: the residual, added to the float output when has_r; bz: the float output
    binarized too, unless NO_BITS)."""
    n_, oh_ = xm.shape[1], geom[4]
    chunks = n_ * nbands
    y3, r3, yb3, ym3 = band_views(y, res, yb, ym)
    tasks = max(1, min(tasks, chunks))
    for task in prange(tasks):
        _narrow_task(xm, mm, masked, w, wt, offs, tb, rcls, irun, geom, nbands, -(-oh_ // nbands), task * chunks // tasks,
                     (task + 1) * chunks // tasks, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r, bz)


@njit(cache=True)
def _narrow_task(xm, mm, masked, w, wt, offs, tb, rcls, irun, geom, nbands, band, chunk0, chunk1, mode, out_mask, scale, bias,
                 table, y3, yb3, ym3, r3, has_r, bz):
    """Chunks chunk0 .. chunk1 - 1 (image n = chunk // nbands, its band chunk % nbands) of
    ``narrow_conv``: each group's counts of the band's rows side by side in acc's rows (a row
    of OW pixels at column (oh - oh0) * OW), then the band through the output stage at once
    (``emit_band``: a channel's pixels of the band are contiguous in the NCHW output)."""
    kh_, sh, dh, pt, oh_, bits = geom
    g_, n_, hx, wg, ow_ = xm.shape
    og = w.shape[3]
    nblk = -(-og // MR)
    kk = kh_ * wg
    xf = xm.reshape(-1)
    acc = np.empty((nblk * MR, band * ow_), np.int32)
    pk = np.empty((2, band * ow_), np.uint64)
    fl = np.empty((2, band * ow_), np.uint32)
    runs = np.empty((band, 3), np.int64)
    tm = np.empty((g_ * og if masked else 1, band * ow_), np.int32)  # masked: the band's popcount(m), per channel
    cnt = np.empty(band * ow_, np.int32)
    ioff = tb.shape[1] - irun * ow_
    for chunk in range(chunk0, chunk1):
        n = chunk // nbands
        oh0 = (chunk % nbands) * oh_ // nbands
        oh1 = (chunk % nbands + 1) * oh_ // nbands
        np_ = (oh1 - oh0) * ow_
        if masked:
            runs[0, 0], runs[0, 1], runs[0, 2] = 0, np_, 0
            nr = 1
        else:
            nr = band_runs(rcls, oh0, oh1, ow_, irun, ioff, runs)
        for g in range(g_):
            for oh in range(oh0, oh1):
                col = (oh - oh0) * ow_
                ih0 = oh * sh - pt
                ki0 = min(kh_, max(0, -(ih0 // dh)))  # the kernel rows inside the input: ki0 .. ki1 - 1
                ki1 = max(ki0, min(kh_, (hx - 1 - ih0) // dh + 1)) if ih0 < hx else ki0
                if not masked:
                    if ki1 > ki0:
                        tile_row(xf, ((g * n_ + n) * hx + ih0) * wg * ow_, offs, ki0 * wg, ki1 * wg, wt, g * nblk * kk * MR,
                                 nblk, acc, ow_, False, col)
                    else:
                        acc[:, col:col + ow_] = 0
                    continue
                c = cnt[col:col + ow_]
                c[:] = 0
                for co in range(og):
                    acc[co, col:col + ow_] = 0
                for ki in range(ki0, ki1):
                    ih = ih0 + ki * dh
                    for wd in range(wg):
                        xr = xm[g, n, ih, wd]
                        wr = w[g, ki, wd]
                        mr = mm[g, n, ih, wd]
                        for ow in range(ow_):
                            c[ow] += popcount(mr[ow])
                        for co in range(og):
                            w0 = wr[co]
                            a0 = acc[co, col:col + ow_]
                            for ow in range(ow_):
                                a0[ow] += popcount((xr[ow] ^ w0) & mr[ow])
            if masked:  # s = popcount(m) - 2 * acc, the same count for every channel
                for co in range(g * og, (g + 1) * og):
                    tm[co, :np_] = cnt[:np_]
            emit_band(acc, tm if masked else tb, runs, nr, 2, g * og, (g + 1) * og, n, oh0 * ow_, np_, mode, out_mask, scale,
                      bias, table, y3, yb3, ym3, r3, has_r, bz, pk, fl)


def band_rows(og: int, oh: int, ow: int) -> int:
    """Output rows of a narrow band: its counts (int32, Cout_g rounded up to the tile's blocks)
    within BAND_COUNTS."""
    return max(1, min(oh, BAND_COUNTS // (-(-og // MR) * MR * ow)))


class NarrowPlan:
    """The merged weights, border corrections and buffers of one BinaryConv layer's narrow path.
    ``vals``: int8 weights {-1, +1} [Cout, Cin_g, kh, kw]."""

    def __init__(self, vals, g, n, h, w_, geom, pads, pad_value):
        kh, kw, sh, sw, dh, dw, oh, ow = geom
        pt, pl, pb, pr = pads
        cout, cg = vals.shape[0], vals.shape[1]
        og = cout // g
        v = vals.reshape(g, og, cg, kh, kw).transpose(0, 3, 1, 4, 2).reshape(g, kh, og, kw * cg)
        self.w = np.ascontiguousarray(pack_bits(v < 0, -1).transpose(0, 1, 3, 2))  # [G, kh, WG, og]
        wg = self.w.shape[2]
        self.wt = tile_weights(self.w.reshape(g, kh * wg, og))
        self.offs = np.array([(ki * dh * wg + wd) * ow for ki in range(kh) for wd in range(wg)], np.int64)
        # the border table: s of count 0 for channel c at output pixel (oh, ow), the merged row's
        # bits of every kernel row inside the input, corrected (zero padding) for the taps of the
        # row's left or right border: for the set S of outside taps, ``2 * c_w - |S| * Cin_g``
        # (module docstring)
        per = np.full((g, kh, og, ow), kw * cg, np.int64)  # [G, kh, og, OW]
        if pad_value == 0 and (pl or pr):
            neg = (vals < 0).reshape(g, og, cg, kh, kw).sum(axis=2).transpose(0, 2, 3, 1)  # [G, kh, kw, og]
            for c in range(ow):
                out = [kj for kj in range(kw) if not 0 <= c * sw - pl + kj * dw < w_]
                if out:
                    per[:, :, :, c] += 2 * neg[:, :, out, :].sum(axis=2) - len(out) * cg
        hx = h + pt + pb if pad_value else h
        ih = np.arange(oh)[:, None] * sh - (0 if pad_value else pt) + np.arange(kh)[None, :] * dh  # [OH, kh]
        rows_in = (ih >= 0) & (ih < hx)
        _, first, rcls = np.unique(rows_in, axis=0, return_index=True, return_inverse=True)
        base = np.einsum("rk,gkco->gcro", rows_in[first].astype(np.int64), per).reshape(g * og, len(first), ow)
        self.band = band_rows(og, oh, ow)
        self.tb, self.rcls, self.irun = table_layout(base.astype(np.int32), rcls, rows_in.all(axis=1), self.band)
        self.ptop = pt if pad_value else 0
        self.fill = _ONES if pad_value == -1 else np.uint64(0)
        self.mask_fill = _ONES if pad_value else np.uint64(0)  # padding values +-1 are nonzero
        self.merged_shape = (g, n, hx, nwords(kw * cg), ow)
        self.merge = (cg, kw, sw, dw, pl, self.ptop)
        self.x4 = (n, h, w_, nwords(g * cg))
        self.geom = (kh, sh, dh, 0 if pad_value else pt, oh, kw * cg)
        self.work = conv_work(n * oh * ow * cout * kh * self.merged_shape[3], n * oh * ow * cout, n)

    def make_scratch(self) -> dict:
        """Merged rows of one workspace; their nonzero masks ("mm") are made on the first run
        whose input has zeros."""
        return {"xm": np.empty(self.merged_shape, np.uint64), "mm": None}

    def emit(self, e, x, xmask, masked, stage, y, yb, ym, r) -> None:
        """``run`` in generated code: ``xmask`` the mask's name (None without one), ``masked``
        the source of a flag that says whether this run's input has zeros."""
        cg, kw, sw, dw, pl, ptop = self.merge
        size = int(np.prod(self.merged_shape))
        literal = emittable(self.merged_shape[0], cg, self.x4[3], sw, kw)  # narrow_emit.py

        def merge(src, fill, dst):
            if literal:
                emit_merge_rows(e, src, dst, self.x4, self.merged_shape, cg, kw, dw, pl, ptop, fill, task_threads(size * kw, e.threads))
            else:
                e.call(merge_rows, src, cg, kw, sw, dw, pl, ptop, fill, dst, work=size * kw)

        xm = e.work(self.merged_shape, np.uint64, "merged")
        merge(x, self.fill, xm)
        mm = xm
        if xmask is not None:
            mm = e.work(self.merged_shape, np.uint64, "merged_mask")
            e.line(f"if {masked}:")
            e.indent += 1
            merge(xmask, self.mask_fill, mm)
            e.indent -= 1
        nbands, tasks = self.split(e.threads)
        flag = Expr(f"({masked} != 0)") if xmask is not None else False
        e.call(narrow_conv, xm, mm, flag, self.w, self.wt, self.offs, self.tb, self.rcls, self.irun, self.geom, nbands, tasks,
               stage.mode, stage.out_mask, stage.scale, stage.bias, stage.table, y, yb, ym, r, stage.residual, stage.bits_zero,
               work=self.work)

    def split(self, threads: int) -> tuple[int, int]:
        """(bands per image, tasks): bands of up to ``self.band`` rows; with several threads,
        more bands until the images x bands chunks split evenly over them (one run per thread)."""
        n, oh = self.merged_shape[1], self.geom[4]
        tt = task_threads(self.work, threads)
        nbands = -(-oh // self.band)
        while (n * nbands < tt or n * nbands % tt) and nbands < oh:
            nbands += 1
        return nbands, min(n * nbands, tt)

    def run(self, x, xmask, stage, y, yb, ym, r, scratch):
        """One run; ``xmask``: the activation's nonzero mask, or None when it has no zero."""
        cg, kw, sw, dw, pl, ptop = self.merge
        xm = scratch["xm"]
        merge_rows(xm.size * kw, x, cg, kw, sw, dw, pl, ptop, self.fill, xm)
        mm = xm
        if xmask is not None:
            if scratch["mm"] is None:
                scratch["mm"] = np.empty_like(xm)
            mm = scratch["mm"]
            merge_rows(mm.size * kw, xmask, cg, kw, sw, dw, pl, ptop, self.mask_fill, mm)
        nbands, tasks = self.split(current_threads())
        narrow_conv(self.work, xm, mm, xmask is not None, self.w, self.wt, self.offs, self.tb, self.rcls, self.irun, self.geom, nbands,
                    tasks, stage.mode, stage.out_mask, stage.scale, stage.bias, stage.table, y, yb, ym, r, stage.residual, stage.bits_zero)
