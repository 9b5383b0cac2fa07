"""bnnc.BinaryConv: XNOR-popcount convolution of packed activations with packed weights.

Four kernels: the narrow one for few input channels (binary_conv_narrow.py), the panel one for
the other one-group layers, ternary weights included (binary_conv_panel.py; both count with the
register tile of binary_tile.py), the tiled one for grouped +-1-weight layers
(binary_conv_tiled.py), and the general one below, which grouped ternary layers and ternary
outputs of fewer than two vectors of pixels take. All compute the same integer s:

For an output pixel and channel, s = sum over taps t and input words of the packed dot product
(runtime/bitpack.py): without masks ``s = n_valid_taps * Cin_g - 2 * sum popcount(x ^ w)``,
with nonzero masks ``s = sum popcount(m) - 2 * sum popcount((x ^ w) & m)``, m = x_mask & w_mask
(with one mask only, sum popcount(m) is counted per input word or precomputed per tap).

- Zero padding (``pad_value`` 0) is exact: taps that fall outside the image are skipped, so they
  count neither in the popcounts nor in K. One-padding (``pad_value`` +-1) copies the input once
  per run into a scratch buffer with a border of words holding that value, so every tap is
  valid (+1 is bit 0; -1 is bit 1 on the valid channels, tail bits stay 0).
- Groups: each group's channels are re-packed word-aligned into scratch ``[G, N, H, W, WG]``
  (same copy as the padding one; no copy at all for group 1 with zero padding).
- Weights are re-laid out once per session as ``w[g, tap, word, cout_g]``: for one input word
  the innermost loop runs over output channels, ``acc[co] += popcount(x_word ^ w[t, wd, co])``,
  which LLVM vectorises (AVX2: a pshufb nibble-table popcount over 4 channels per instruction;
  NEON: cnt). Two neighbouring output pixels share each weight load, and two input words go
  through each pass over the channels.
- Work is split over (image, output row, block of output channels); a block of the bits
  output always covers whole 64-channel words, so no two threads write the same word.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.bitpack import nwords, popcount, tail_mask
from runtime.codegen import Expr
from runtime.kernels.base import Kernel, Step, Twin, check_scratch, register, task_threads
from runtime.kernels.binary_common import (
    OutputStage,
    _all_set,
    all_set,
    check_outputs,
    clear_row_words,
    conv_work,
    emit_row,
    has_input,
    pack_last,
    packed_image_input,
    row_task,
    weight_values,
    window_attrs,
)
from runtime.kernels.binary_conv_narrow import NarrowPlan
from runtime.kernels.binary_conv_panel import PANEL_PIXELS, panel_conv, panel_plan, panel_weights
from runtime.kernels.binary_conv_tiled import tiled_conv, tiled_weights
from runtime.threads import current_threads


# -- compiled kernels ---------------------------------------------------------------------------
@Twin
def _regroup(x, cg, pt, pl, fill, tail, out):
    """out[g, n, pt + h, pl + w, :] = bits g*cg .. g*cg + cg - 1 of pixel x[n, h, w], word
    aligned and cut to ``tail`` (the valid bits of cg channels); pixels of ``out`` outside ``x``
    (the border) hold the words ``fill``."""
    n_, h_, w_, wc = x.shape
    g_, _, hp, wp, wg = out.shape
    for r in prange(g_ * n_ * hp):
        ihp = r % hp
        q = r // hp
        n = q % n_
        g = q // n_
        ih = ihp - pt
        for iwp in range(wp):
            iw = iwp - pl
            if ih < 0 or ih >= h_ or iw < 0 or iw >= w_:
                for j in range(wg):
                    out[g, n, ihp, iwp, j] = fill[j]
                continue
            for j in range(wg):
                p = g * cg + j * 64
                q0 = p >> 6
                off = p & 63
                v = x[n, ih, iw, q0] >> np.uint64(off)
                if off != 0 and q0 + 1 < wc:
                    v |= x[n, ih, iw, q0 + 1] << np.uint64(64 - off)
                out[g, n, ihp, iwp, j] = v & tail[j]


@njit(cache=True)
def _masked_tap(x, xm, w, wm, wcnt, ih, t, off, sw, lo, hi, c0, c1, mmode, pc, pm):
    """Tap t for output pixels lo..hi-1 with nonzero masks: pc += popcount((x ^ w) & m) and
    pm += popcount(m), m = x_mask & w_mask. mmode 1 (activation mask only): popcount(m) is
    one count per input word; 2 (weight mask only): the precomputed count wcnt[t] per channel;
    3 (both): counted per channel. Pixel pairs share the weight loads as in the plain path."""
    wg = x.shape[2]
    ow = lo
    while ow < hi:
        two = ow + 1 < hi
        iw = ow * sw + off
        a0 = pc[ow]
        a1 = pc[ow + 1] if two else pc[ow]
        for wd in range(wg):
            x0 = x[ih, iw, wd]
            x1 = x[ih, iw + sw, wd] if two else x0
            wr = w[t, wd, c0:c1]
            if mmode == 1:
                m0 = xm[ih, iw, wd]
                m1 = xm[ih, iw + sw, wd] if two else m0
                if two:
                    for j in range(wr.shape[0]):
                        a0[j] += popcount((x0 ^ wr[j]) & m0)
                        a1[j] += popcount((x1 ^ wr[j]) & m1)
                else:
                    for j in range(wr.shape[0]):
                        a0[j] += popcount((x0 ^ wr[j]) & m0)
                for p in range(ow, ow + 1 + two):
                    cnt = popcount(m0 if p == ow else m1)
                    b = pm[p]
                    for j in range(b.shape[0]):
                        b[j] += cnt
            elif mmode == 2:
                mr = wm[t, wd, c0:c1]
                if two:
                    for j in range(wr.shape[0]):
                        a0[j] += popcount((x0 ^ wr[j]) & mr[j])
                        a1[j] += popcount((x1 ^ wr[j]) & mr[j])
                else:
                    for j in range(wr.shape[0]):
                        a0[j] += popcount((x0 ^ wr[j]) & mr[j])
            else:
                mr = wm[t, wd, c0:c1]
                for p in range(ow, ow + 1 + two):
                    xp = x0 if p == ow else x1
                    mp = xm[ih, iw + (p - ow) * sw, wd]
                    a = pc[p]
                    b = pm[p]
                    for j in range(wr.shape[0]):
                        m = mp & mr[j]
                        a[j] += popcount((xp ^ wr[j]) & m)
                        b[j] += popcount(m)
        if mmode == 2:
            wc = wcnt[t, c0:c1]
            for p in range(ow, ow + 1 + two):
                b = pm[p]
                for j in range(b.shape[0]):
                    b[j] += wc[j]
        ow += 2


@njit(cache=True)
def _row(x, xm, w, wm, wcnt, oh, c0, c1, geom, masked, pc, pm, nv):
    """Accumulate the popcounts of one output row (all pixels, output channels c0..c1) of one
    image and group: x, xm [Hx, Wx, WG], w, wm [taps, WG, Cout_g]."""
    kh_, kw_, sh, sw, dh, dw, pt, pl, _, ow_, _ = geom
    hx, wx, wg = x.shape
    for kh in range(kh_):
        ih = oh * sh - pt + kh * dh
        if ih < 0 or ih >= hx:
            continue
        for kw in range(kw_):
            t = kh * kw_ + kw
            off = kw * dw - pl
            ow0 = 0 if off >= 0 else (sw - 1 - off) // sw
            ow1 = min(ow_, (wx - 1 - off) // sw + 1)
            for ow in range(ow0, ow1):
                nv[ow] += 1
            if masked:
                _masked_tap(x, xm, w, wm, wcnt, ih, t, off, sw, ow0, ow1, c0, c1, masked, pc, pm)
                continue
            ow = ow0  # pairs of output pixels share every weight load
            while ow + 1 < ow1:
                iw = ow * sw + off
                a0 = pc[ow]
                a1 = pc[ow + 1]
                wd = 0
                while wd + 1 < wg:
                    x0 = x[ih, iw, wd]
                    x1 = x[ih, iw + sw, wd]
                    y0 = x[ih, iw, wd + 1]
                    y1 = x[ih, iw + sw, wd + 1]
                    wr = w[t, wd, c0:c1]
                    vr = w[t, wd + 1, c0:c1]
                    for j in range(wr.shape[0]):
                        wv = wr[j]
                        vv = vr[j]
                        a0[j] += popcount(x0 ^ wv) + popcount(y0 ^ vv)
                        a1[j] += popcount(x1 ^ wv) + popcount(y1 ^ vv)
                    wd += 2
                if wd < wg:
                    x0 = x[ih, iw, wd]
                    x1 = x[ih, iw + sw, wd]
                    wr = w[t, wd, c0:c1]
                    for j in range(wr.shape[0]):
                        wv = wr[j]
                        a0[j] += popcount(x0 ^ wv)
                        a1[j] += popcount(x1 ^ wv)
                ow += 2
            if ow < ow1:
                iw = ow * sw + off
                a0 = pc[ow]
                for wd in range(wg):
                    x0 = x[ih, iw, wd]
                    wr = w[t, wd, c0:c1]
                    for j in range(wr.shape[0]):
                        a0[j] += popcount(x0 ^ wr[j])


@Twin
def _binary_conv(x, xm, w, wm, wcnt, geom, masked, cb, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r, bz):
    """x, xm: uint64 [G, N, Hx, Wx, WG]; w, wm: uint64 [G, taps, WG, Cout_g]; masked: 0 no masks,
    1 activation mask (xm), 2 weight mask (wm, with wcnt int64 [G, taps, Cout_g] its per-tap
    popcounts), 3 both; unused operands may be dummies; geom: (kh, kw, sh, sw, dh, dw, pt, pl,
    OH, OW, Cin_g); cb: output channels per task (a multiple of 64 when G == 1 and cb < Cout_g);
    y float32 NCHW or yb/ym uint64 NHWC-words by ``mode``; res float32 NCHW, added to y when has_r;
    bz: with the float output, also write it binarized into yb/ym with that value at 0 (NO_BITS:
    not).
    BinaryConv.__init__ checks all that."""
    oh_, ow_, cg = geom[8], geom[9], geom[10]
    g_, n_ = x.shape[0], x.shape[1]
    coutg = w.shape[3]
    nblk = (coutg + cb - 1) // cb
    for chunk in prange(n_ * oh_ * nblk):
        n, oh, c0, c1 = row_task(chunk, nblk, oh_, coutg, cb)
        pc = np.empty((ow_, c1 - c0), np.int64)
        pm = np.empty((ow_ if masked else 1, c1 - c0), np.int64)
        nv = np.empty(ow_, np.int64)
        scratch = np.empty((3, c1 - c0), np.int64)
        clear_row_words(mode, bz, out_mask, g_, coutg, c0, c1, n, oh, yb, ym)
        for g in range(g_):
            pc[:] = 0
            pm[:] = 0
            nv[:] = 0
            _row(x[g, n], xm[g, n] if masked & 1 else xm[0, 0], w[g], wm[g] if masked & 2 else wm[0],
                 wcnt[g] if masked & 2 else wcnt[0], oh, c0, c1, geom, masked, pc, pm, nv)
            emit_row(pc, pm, nv, masked, cg, g * coutg + c0, n, oh, mode, out_mask, scale, bias, table, y, yb, ym, res, has_r,
                  bz, scratch[0], scratch[1], scratch[2])


# -- the kernel ---------------------------------------------------------------------------------
def choose_narrow(cg: int, kw: int, og: int, ow: int, g: int = 1) -> bool:
    """Whether a layer takes the narrow path (binary_conv_narrow.py), from Cin_g, the kernel
    width, Cout_g, the output width and the groups. Measured (benchmarks/bench_binary_conv_paths.py,
    one thread): the narrow path is 1.4-5x faster than the tiled one with a merged kernel row of
    at most 3 words (Cin_g <= 64 at kw = 3) and rows of at least 8 pixels, unless the many output
    channels (more than 64) of a short row (under 32 pixels) suit the tiled path's channel loop
    better. Whole words of input channels in one group merge into nothing shorter: the panel
    path counts them as fast and writes its output stage along longer runs."""
    if g == 1 and cg % 64 == 0:
        return False
    return nwords(kw * cg) <= 3 and ow >= 8 and (og <= 64 or ow >= 32)


@register("bnnc.BinaryConv")
class BinaryConv(Kernel):
    n_inputs = (5, 7)  # X, X_mask, W, W_mask, then scale, bias, R (float output) or rule (bits)
    n_outputs = (1, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = window_attrs(step)
        g, cin, cout = int(step.attr("group", 1)), int(step.attr("cin", 0)), int(step.attr("cout", 0))
        pad_value = int(step.attr("pad_value", 0))
        if min(kh, kw, sh, sw, dh, dw, g, cin, cout) < 1 or min(pt, pl, pb, pr) < 0:
            raise step.error("kernel_shape, strides, dilations, group, cin, cout must be positive, pads >= 0")
        if cin % g or cout % g:
            raise step.error(f"cin {cin} and cout {cout} must be multiples of group {g}")
        if pad_value not in (0, 1, -1):
            raise step.error(f"pad_value must be 0, 1 or -1, got {pad_value}")
        n, h, w_, self.has_xm = packed_image_input(step, cin)
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise step.error(f"the kernel does not fit the {h}x{w_} input")
        self.stage = OutputStage(step, 4, cout)
        check_outputs(step, self.stage.out_shapes((n, cout, oh, ow), (n, oh, ow, nwords(cout))))

        cg, og = cin // g, cout // g
        vals = weight_values(step, 2, (cout, cg, kh, kw))
        # mask mode: 1 activation mask, 2 weight mask (ternary), 3 both
        self.masked = (1 if self.has_xm else 0) | (2 if has_input(step, 3) else 0)
        self.cin_tail = tail_mask(cin)
        self.narrow = None
        if not self.masked & 2 and choose_narrow(cg, kw, og, ow, g):
            self.narrow = NarrowPlan(vals, g, n, h, w_, (kh, kw, sh, sw, dh, dw, oh, ow), (pt, pl, pb, pr), pad_value)
        vals = vals.reshape(g, og, cg, kh * kw).transpose(0, 3, 1, 2)  # [G, taps, og, cg]
        signs, masks = pack_last(vals)
        self.w = np.ascontiguousarray(signs.transpose(0, 1, 3, 2))  # [G, taps, WG, og]
        self.wm = self.w[:1, :1, :1, :1].copy()
        self.wcnt = np.zeros((1, 1, 1), np.int64)
        if self.masked & 2:
            self.wm = np.ascontiguousarray(masks.transpose(0, 1, 3, 2))
            self.wcnt = np.ascontiguousarray((vals != 0).sum(axis=3, dtype=np.int64))  # [G, taps, og]
        # one group takes the panel path (binary_conv_panel.py; ternary weights with their mask),
        # +-1 weights with groups the tiled one (binary_conv_tiled.py); both count through an
        # activation mask with zeros at run time
        ones = not self.masked & 2 and self.narrow is None
        # an output of a vector's pixels or fewer (the 2x2 and 1x1 convs of small nets) leaves the
        # tile's lanes empty and pays the panel's set-up for nothing: the tiled path's channel loop
        panel = self.narrow is None and g == 1 and oh * ow >= PANEL_PIXELS
        self.tiled = tiled_weights(self.w) if ones and not panel else None
        self.panel = None
        if panel:
            hx0, wx0 = (h + pt + pb, w_ + pl + pr) if pad_value else (h, w_)
            # the taps' bits concatenated: fewer words per pixel when Cin is not a multiple of 64
            dense = pack_last(vals[0].transpose(1, 0, 2).reshape(og, kh * kw * cg))
            dense = tuple(np.ascontiguousarray(d.T[None]) for d in dense)
            self.panel = panel_weights(self.w, (kh, kw, sh, sw, dh, dw, 0 if pad_value else pt, 0 if pad_value else pl, oh, ow, cg),
                                       hx0, wx0, self.wm if self.masked & 2 else None, dense if self.masked & 2 else dense[:1] + (None,))

        # pre-padding (pad +-1) and group re-packing share one scratch copy of the input
        self.pad = pad_value != 0
        self.copy = g > 1 or self.pad
        hx, wx = (h + pt + pb, w_ + pl + pr) if self.pad else (h, w_)
        shape = (g, n, hx, wx, nwords(cg))
        tail = tail_mask(cg)
        self.fill = tail.copy() if pad_value == -1 else np.zeros_like(tail)
        self.tail = tail
        self.pt, self.pl = (pt, pl) if self.pad else (0, 0)
        self.copy_shape = shape
        check_scratch(step, self.narrow.merged_shape if self.narrow is not None else shape, np.uint64)
        cpt, cpl = (0, 0) if self.pad else (pt, pl)
        self.geom = (kh, kw, sh, sw, dh, dw, cpt, cpl, oh, ow, cg)
        self.g, self.og, self.rows = g, og, n * oh
        self.work = conv_work(n * oh * ow * cout * kh * kw * nwords(cg), n * oh * ow * cout, n)

    def _block(self, threads: int) -> int:
        """Output channels per task: whole groups, or enough 64-channel blocks to feed threads."""
        if self.g > 1:
            return self.og
        want = -(-2 * threads // self.rows)  # blocks per row
        if want <= 1:
            return self.og
        per = -(-self.og // want)
        return -(-per // 64) * 64

    def overwritable_input(self) -> int | None:
        """The residual R, on the panel and narrow paths: their output stage reads R's element
        just before it writes the output's (binary_conv_stage.py)."""
        banded = self.panel is not None or self.narrow is not None
        return self.stage.res_index if banded and self.stage.residual else None

    def make_scratch(self) -> dict:
        """The narrow path's merged rows, or the regrouped (padded) input and its mask."""
        if self.narrow is not None:
            return self.narrow.make_scratch()
        if not self.copy:
            return {}
        return {"xg": np.empty(self.copy_shape, np.uint64),
                "xmg": np.empty(self.copy_shape, np.uint64) if self.has_xm else None}

    def emit(self, e, ins, outs):
        x, st = ins[0], self.stage
        y, yb, ym = st.buffers(outs, 4)
        r = st.residual_expr(ins, 4)
        masked: object = self.masked
        if self.has_xm:  # no zero among the activations: the mask changes nothing
            masked = e.fresh("masked")
            e.line(f"{masked} = {self.masked & 2} if {e.fn(_all_set)}({ins[1]}.reshape((-1, {self.cin_tail.size})), "
                   f"{e.const(self.cin_tail)}) else {self.masked}")
        if self.narrow is not None:
            self.narrow.emit(e, x, ins[1] if self.has_xm else None, masked, st, y, yb, ym, r)
            return
        cg = self.geom[10]
        if self.copy:
            xg = e.work(self.copy_shape, np.uint64, "regrouped")
            e.call(_regroup, x, cg, self.pt, self.pl, self.fill, self.tail, xg, work=int(np.prod(self.copy_shape)))
        else:
            xg = Expr(f"{x}.reshape({e.lit((1,) + tuple(self.step.in_shapes[0]))})")
        xmg = xg
        if self.has_xm and self.copy:
            xmg = e.work(self.copy_shape, np.uint64, "regrouped_mask")
            e.line(f"if {masked} & 1:")
            e.indent += 1
            e.call(_regroup, ins[1], cg, self.pt, self.pl, self.tail, self.tail, xmg, work=int(np.prod(self.copy_shape)))
            e.indent -= 1
        elif self.has_xm:
            xmg = Expr(f"{ins[1]}.reshape({e.lit((1,) + tuple(self.step.in_shapes[1]))})")
        threads = task_threads(self.work, e.threads)
        if self.panel is not None:
            nbands, cb, tasks = panel_plan(self.w, self.geom[8], self.geom[9], self.rows // self.geom[8], threads)
            e.call(panel_conv, Expr(f"{xg}[0]"), Expr(f"{xmg}[0]"), Expr(f"(({masked} & 1) != 0)") if self.has_xm else False,
                   self.tail, *self.panel, self.geom, nbands, cb, tasks, st.mode, st.out_mask, st.scale, st.bias, st.table, y,
                   yb, ym, r, st.residual, st.bits_zero, work=self.work)
            return
        if self.tiled is not None:  # no weight mask: the activation's, if it has zeros, goes in
            e.call(tiled_conv, xg, xmg, Expr(f"({masked} != 0)") if self.has_xm else False, *self.tiled, self.geom,
                   self._block(threads), 4 * threads, st.mode, st.out_mask, st.scale, st.bias, st.table, y, yb, ym, r, st.residual,
                   st.bits_zero, work=self.work)
            return
        e.call(_binary_conv, xg, xmg, self.w, self.wm, self.wcnt, self.geom, masked, self._block(threads), st.mode,
               st.out_mask, st.scale, st.bias, st.table, y, yb, ym, r, st.residual, st.bits_zero, work=self.work)

    def run(self, ins, outs, scratch):
        x = np.ascontiguousarray(ins[0])
        st = self.stage
        y, yb, ym = st.buffers(outs, 4)
        masked = self.masked
        if self.has_xm and all_set(ins[1], self.cin_tail):
            masked &= 2  # no zero among the activations: the mask changes nothing
        r = st.residual_of(ins, 4)
        if self.narrow is not None:  # no weight mask there; the activation mask if it has zeros
            self.narrow.run(x, np.ascontiguousarray(ins[1]) if masked else None, st, y, yb, ym, r, scratch)
            return
        if self.copy:
            xg = scratch["xg"]
            _regroup(xg.size, x, self.geom[10], self.pt, self.pl, self.fill, self.tail, xg)
        else:
            xg = x.reshape((1,) + x.shape)
        if masked & 1:
            xm = np.ascontiguousarray(ins[1])
            if self.copy:
                xmg = scratch["xmg"]
                _regroup(xmg.size, xm, self.geom[10], self.pt, self.pl, self.tail, self.tail, xmg)
            else:
                xmg = xm.reshape((1,) + xm.shape)
        else:
            xmg = xg  # unused
        threads = task_threads(self.work, current_threads())
        if self.panel is not None:
            nbands, cb, tasks = panel_plan(self.w, self.geom[8], self.geom[9], self.rows // self.geom[8], threads)
            panel_conv(self.work, xg[0], xmg[0], (masked & 1) != 0, self.tail, *self.panel, self.geom, nbands, cb, tasks, st.mode,
                       st.out_mask, st.scale, st.bias, st.table, y, yb, ym, r, st.residual, st.bits_zero)
            return
        if self.tiled is not None:
            tiled_conv(self.work, xg, xmg, masked != 0, *self.tiled, self.geom, self._block(threads), 4 * threads, st.mode,
                       st.out_mask, st.scale, st.bias, st.table, y, yb, ym, r, st.residual, st.bits_zero)
            return
        _binary_conv(self.work, xg, xmg, self.w, self.wm, self.wcnt, self.geom, masked, self._block(threads),
                     st.mode, st.out_mask, st.scale, st.bias, st.table, y, yb, ym, r, st.residual, st.bits_zero)
