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
- The inner loop runs over output columns (contiguous merged rows) with one weight word
  broadcast: ``acc[co, ow] += popcount(xm[.., wd, ow] ^ w[ki, wd, co])``.
- Padding: with ``pad_value`` +-1 the merged rows (and extra rows above and below) hold that
  value, so every tap is valid. With zero padding, rows outside the image are skipped, and a
  merged row that crosses the left or right border holds +1 bits (0) for the pixels outside;
  their contribution is taken back exactly by a per-column, per-channel correction ``d``
  computed from the weights: for the set S of outside taps, ``s`` over the valid bits is
  ``kw*Cin_g - 2*popcount + (2*c_w - |S|*Cin_g)``, c_w the count of -1 weights in S.

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
from runtime.kernels.binary_common import BITS, NO_BITS, conv_work, or_sign_planes, rule_flag, rule_of
from runtime.kernels.binary_conv_stage import BLOCK, _or_sign_block
from runtime.kernels.binary_span import span_float
from runtime.kernels.binary_tile import MR, tile_row, tile_weights
from runtime.threads import current_threads

_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


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
                if whole:
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


@njit(cache=True)
def _emit_rows(acc, base, k0, g, n, oh, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz, bk, pk, fl):
    """s = k0 + base - 2 * acc ([Cout_g, OW] int32, the first rows of acc) for one output row of
    group g, through the output stage, one channel at a time along the row (binary_common.py:
    OutputStage): floats in vectors to the row's end (binary_span.span_float; LLVM's own loop
    left rows of 8 to 31 pixels to its scalar remainder), their signs eight channels at a time
    (binary_conv_stage._or_sign_block). The bits of a word's 64 channels gather in a contiguous
    row ``pk`` (planes sign, mask) and go to the pixel-major output words once per word, not once
    per channel. bk int32, pk uint64 and fl uint32 [>= 2, OW] are scratch."""
    og, ow_ = base.shape  # acc may have more rows (the tile's padded channel blocks)
    bits = mode == BITS or bz != NO_BITS
    pk[:] = 0
    for co in range(og):
        c = g * og + co
        a = acc[co]
        sh = np.uint64(c & 63)
        if mode != BITS:
            b = bk[0]
            for ow in range(ow_):
                b[ow] = k0 + base[co, ow]
            yr = y[n, c, oh]
            span_float(b, a, yr, res[n, c, oh] if has_r else yr, has_r, 2, scale[c], bias[c])
            if bz != NO_BITS:  # the float row binarized too (a fused bnnc.Binarize)
                if og % BLOCK:  # blocks from channel g * og on would not stay inside words
                    or_sign_planes(yr, ow_, bz, sh, pk)
                elif (co + 1) % BLOCK == 0:  # a block of eight channels, inside one word
                    y8 = y[n, c + 1 - BLOCK:c + 1]
                    _or_sign_block(y8[0, oh], y8[1, oh], y8[2, oh], y8[3, oh], y8[4, oh], y8[5, oh], y8[6, oh], y8[7, oh], ow_, bz,
                                   np.uint64((c + 1 - BLOCK) & 63), pk, fl)
        else:
            b = base[co]
            for plane in range(2 if out_mask else 1):
                lo, hi, f_below, f_mid, f_above = rule_of(table, c, plane)
                for ow in range(ow_):
                    f = rule_flag(k0 + b[ow] - 2 * a[ow], lo, hi, f_below, f_mid, f_above)
                    pk[plane, ow] |= np.uint64(f & 1) << sh
        if bits and ((c & 63) == 63 or co == og - 1):
            q = c >> 6
            ybr = yb[n, oh]
            for ow in range(ow_):
                ybr[ow, q] |= pk[0, ow]
            if out_mask:
                ymr = ym[n, oh]
                for ow in range(ow_):
                    ymr[ow, q] |= pk[1, ow]
            pk[:] = 0


@Twin
def narrow_conv(xm, mm, masked, w, wt, offs, d, dcols, geom, tasks, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz):
    """xm uint64 [G, N, Hx, WG, OW] merged rows, mm their merged nonzero masks (when ``masked``:
    s = popcount(m) - 2 popcount((x ^ w) & m), and outside pixels, mask 0, count for nothing);
    w uint64 [G, kh, WG, Cout_g] merged weights, wt the same as the register tile's
    (binary_tile.py), offs[ki * WG + wd] where word wd of kernel row ki starts from the first
    row's (the unmasked counts go through the tile); d int64 [G, kh, Cout_g, OW] border corrections,
    nonzero only in the columns dcols, used when ``has_d`` (zero padding without masks); geom: (kh,
    sh, dh, pt, OH, bits of a merged row); the N * OH output rows are split into ``tasks`` runs;
    outputs as binary_conv's (res: the residual, added to the float output when has_r; bz: the
    float output binarized too, unless NO_BITS)."""
    kh_, sh, dh, pt, oh_, bits = geom
    has_d = d.shape[0] > 0 and not masked
    g_, n_, hx, wg, ow_ = xm.shape
    og = w.shape[3]
    nblk = -(-og // MR)
    kk = kh_ * wg
    rows = n_ * oh_
    xf = xm.reshape(-1)
    for task in prange(tasks):
        acc = np.empty((nblk * MR, ow_), np.int32)
        base = np.zeros((og, ow_), np.int32)
        cnt = np.zeros(ow_, np.int32)
        bk = np.empty((1, ow_), np.int32)
        pk = np.empty((2, ow_), np.uint64)
        fl = np.empty((2, ow_), np.uint32)
        for r in range(task * rows // tasks, (task + 1) * rows // tasks):
            n = r // oh_
            oh = r % oh_
            if mode == BITS or bz != NO_BITS:
                yb[n, oh] = 0
                if out_mask:
                    ym[n, oh] = 0
            ih0 = oh * sh - pt
            ki0 = min(kh_, max(0, -(ih0 // dh)))  # the kernel rows inside the input: ki0 .. ki1 - 1
            ki1 = max(ki0, min(kh_, (hx - 1 - ih0) // dh + 1)) if ih0 < hx else ki0
            for g in range(g_):
                if has_d:  # the other columns of base stay 0 (np.zeros above)
                    for co in range(og):
                        for i in range(dcols.shape[0]):
                            base[co, dcols[i]] = 0
                        for ki in range(ki0, ki1):  # only the border columns have corrections
                            b = base[co]
                            dr = d[g, ki, co]
                            for i in range(dcols.shape[0]):
                                b[dcols[i]] += dr[dcols[i]]
                if not masked:
                    if ki1 > ki0:
                        tile_row(xf, ((g * n_ + n) * hx + ih0) * wg * ow_, offs, ki0 * wg, ki1 * wg, wt, g * nblk * kk * MR,
                                 nblk, acc, ow_)
                    else:
                        acc[:] = 0
                    _emit_rows(acc, base, (ki1 - ki0) * bits, g, n, oh, mode, out_mask, scale, bias, table, y, yb, ym, res,
                               has_r, bz, bk, pk, fl)
                    continue
                acc[:] = 0
                cnt[:] = 0
                for ki in range(ki0, ki1):
                    ih = ih0 + ki * dh
                    for wd in range(wg):
                        xr = xm[g, n, ih, wd]
                        wr = w[g, ki, wd]
                        mr = mm[g, n, ih, wd]
                        for ow in range(ow_):
                            cnt[ow] += popcount(mr[ow])
                        for co in range(og):
                            w0 = wr[co]
                            a0 = acc[co]
                            for ow in range(ow_):
                                a0[ow] += popcount((xr[ow] ^ w0) & mr[ow])
                for co in range(og):  # s = popcount(m) - 2 * acc, the same count for every channel
                    base[co] = cnt
                _emit_rows(acc, base, 0, g, n, oh, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz, bk, pk, fl)


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
        self.d = np.zeros((0, kh, og, ow), np.int64)  # empty: no corrections
        self.dcols = np.zeros(0, np.int64)
        if pad_value == 0 and (pl or pr):
            self.d = np.zeros((g, kh, og, ow), np.int64)
            # S(ow): the taps of a kernel row that fall outside the image, left or right
            neg = (vals < 0).reshape(g, og, cg, kh, kw).sum(axis=2).transpose(0, 2, 3, 1)  # [G, kh, kw, og]
            for c in range(ow):
                out = [kj for kj in range(kw) if not 0 <= c * sw - pl + kj * dw < w_]
                if out:
                    self.d[:, :, :, c] = 2 * neg[:, :, out, :].sum(axis=2) - len(out) * cg
            self.dcols = np.flatnonzero(self.d.any(axis=(0, 1, 2))).astype(np.int64)
        self.ptop = pt if pad_value else 0
        hx = h + pt + pb if pad_value else h
        self.fill = _ONES if pad_value == -1 else np.uint64(0)
        self.mask_fill = _ONES if pad_value else np.uint64(0)  # padding values +-1 are nonzero
        self.merged_shape = (g, n, hx, nwords(kw * cg), ow)
        self.merge = (cg, kw, sw, dw, pl, self.ptop)
        self.geom = (kh, sh, dh, 0 if pad_value else pt, oh, kw * cg)
        self.work = conv_work(n * oh * ow * cout * kh * self.merged_shape[3], n * oh * ow * cout, "narrow")

    def make_scratch(self) -> dict:
        """Merged rows of one workspace; their nonzero masks ("mm") are made on the first run
        whose input has zeros."""
        return {"xm": np.empty(self.merged_shape, np.uint64), "mm": None}

    def emit(self, e, x, xmask, masked, stage, y, yb, ym, r) -> None:
        """``run`` in generated code: ``xmask`` the mask's name (None without one), ``masked``
        the source of a flag that says whether this run's input has zeros."""
        cg, kw, sw, dw, pl, ptop = self.merge
        size = int(np.prod(self.merged_shape))
        xm = e.work(self.merged_shape, np.uint64, "merged")
        e.call(merge_rows, x, cg, kw, sw, dw, pl, ptop, self.fill, xm, work=size * kw)
        mm = xm
        if xmask is not None:
            mm = e.work(self.merged_shape, np.uint64, "merged_mask")
            e.line(f"if {masked}:")
            e.indent += 1
            e.call(merge_rows, xmask, cg, kw, sw, dw, pl, ptop, self.mask_fill, mm, work=size * kw)
            e.indent -= 1
        tasks = min(self.merged_shape[1] * self.geom[4], 4 * task_threads(self.work, e.threads))
        flag = Expr(f"({masked} != 0)") if xmask is not None else False
        e.call(narrow_conv, xm, mm, flag, self.w, self.wt, self.offs, self.d, self.dcols, self.geom, tasks, stage.mode, stage.out_mask, stage.scale,
               stage.bias, stage.table, y, yb, ym, r, stage.residual, stage.bits_zero, work=self.work)

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
        tasks = min(xm.shape[1] * self.geom[4], 4 * task_threads(self.work, current_threads()))
        narrow_conv(self.work, xm, mm, xmask is not None, self.w, self.wt, self.offs, self.d, self.dcols, self.geom, tasks, stage.mode,
                    stage.out_mask, stage.scale, stage.bias, stage.table, y, yb, ym, r, stage.residual, stage.bits_zero)
