"""bnnc.BinaryDense: XNOR-popcount matrix product of a packed input with packed weights.

``s[n, co] = K - 2 * sum_k popcount(x[n, k] ^ w[co, k])`` over the input words (bit convention:
runtime/bitpack.py), or with nonzero masks ``sum popcount(m) - 2 * sum popcount((x ^ w) & m)``
(with one mask only, sum popcount(m) is one count per image or precomputed per weight row).

The input may be a flattened packed image: physically ``[N, H*W*ceil(C/64)]`` words (pixel by
pixel, each pixel's channels packed), while the logical weight column k refers to element k of
the NCHW ("chw") or NHWC ("hwc") flattening of ``[C, H, W]`` (attributes ``in_chw``,
``in_order``). ``__init__`` moves every weight bit to the physical position of its input element
once, so the run time loop is a plain word-by-word XOR-popcount, vectorised by LLVM along k.
Output channels are split into 64-channel blocks per task, so no two threads share an output word.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from runtime.bitpack import nwords, popcount
from runtime.codegen import Expr
from runtime.kernels.base import Kernel, Step, Twin, register, task_threads
from runtime.kernels.binary_common import (
    BITS,
    FLOAT,
    NO_BITS,
    OutputStage,
    check_input,
    check_outputs,
    emit_bits,
    emit_sign_bits,
    has_input,
    pack_last,
    weight_values,
)
from runtime.threads import current_threads

CHANNEL_RUN = 64  # output channels from which the counts run along them (fewer: as fast either way)
L1_WEIGHTS = 32 * 1024  # bytes of weights a one-thread block reads


@Twin
def _binary_dense(x, xm, w, wm, wcnt, wt, k, masked, cb, mode, out_mask, scale, bias, table, y, yb, ym, r, has_r, bz):
    """x, xm: uint64 [N, Kw]; w, wm: uint64 [Cout, Kw] in the physical input order; masked: 0 no
    masks, 1 activation mask xm, 2 weight mask wm (wcnt int64 [Cout]: nonzero weights per row),
    3 both; wt: w transposed, [Kw, Cout], when the counts run along the output channels (no
    weight mask; else [0, 0]); k: number of valid input elements; cb: output channels per task
    (a multiple of 64 for the bits output); y float32 [N, Cout] or yb/ym uint64
    [N, ceil(Cout/64)]; r float32 [N, Cout], added to y when has_r; bz: with the float output,
    also write it binarized into yb/ym with that value at 0 (NO_BITS: not). BinaryDense.__init__
    checks all that."""
    n_, kw = x.shape
    cout = w.shape[0]
    nblk = (cout + cb - 1) // cb
    for blk in prange(nblk):
        c0 = blk * cb
        c1 = min(cout, c0 + cb)
        scratch = np.empty((3, c1 - c0), np.int64)
        srow = scratch[0]
        for n in range(n_):
            xr = x[n]
            xmr = xm[n] if masked & 1 else xm[0]
            xcnt = 0
            if masked == 1:
                for i in range(kw):
                    xcnt += popcount(xmr[i])
            if wt.shape[0] == kw:  # along the channels: one input word against a run of weight words
                srow[:] = 0
                for i in range(kw):
                    xi = xr[i]
                    mi = xmr[i] if masked == 1 else ~np.uint64(0)
                    wr = wt[i, c0:c1]
                    for j in range(c1 - c0):
                        srow[j] += popcount((xi ^ wr[j]) & mi)
                for j in range(c1 - c0):
                    srow[j] = (xcnt if masked == 1 else k) - 2 * srow[j]
            else:  # along the input words
                for co in range(c0, c1):
                    wr = w[co]
                    a = 0
                    if masked == 0:
                        for i in range(kw):
                            a += popcount(xr[i] ^ wr[i])
                        srow[co - c0] = k - 2 * a
                    elif masked == 1:
                        for i in range(kw):
                            a += popcount((xr[i] ^ wr[i]) & xmr[i])
                        srow[co - c0] = xcnt - 2 * a
                    elif masked == 2:
                        wmr = wm[co]
                        for i in range(kw):
                            a += popcount((xr[i] ^ wr[i]) & wmr[i])
                        srow[co - c0] = wcnt[co] - 2 * a
                    else:
                        b = 0
                        wmr = wm[co]
                        for i in range(kw):
                            m = xmr[i] & wmr[i]
                            a += popcount((xr[i] ^ wr[i]) & m)
                            b += popcount(m)
                        srow[co - c0] = b - 2 * a
            if mode == BITS or bz != NO_BITS:
                for q in range(c0 >> 6, ((c1 - 1) >> 6) + 1):
                    yb[n, q] = 0
                    if out_mask:
                        ym[n, q] = 0
            if mode == FLOAT:
                for j in range(c1 - c0):
                    y[n, c0 + j] = np.float32(np.int32(srow[j])) * scale[c0 + j] + bias[c0 + j]
                if has_r:
                    for j in range(c1 - c0):
                        y[n, c0 + j] += r[n, c0 + j]
                if bz != NO_BITS:
                    emit_sign_bits(y[n, c0:c1], bz, c0, yb[n], ym[n] if out_mask else ym[0], out_mask, scratch[1],
                                   scratch[2])
                continue
            emit_bits(srow, table, c0, yb[n], ym[n] if out_mask else ym[0], out_mask, scratch[1], scratch[2])


@register("bnnc.BinaryDense")
class BinaryDense(Kernel):
    n_inputs = (5, 7)  # X, X_mask, W, W_mask, then scale, bias, R (float output) or rule (bits)
    n_outputs = (1, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        cout, k = int(step.attr("cout", 0)), int(step.attr("k", 0))
        chw = [int(v) for v in step.attr("in_chw", [k, 1, 1])]
        order = step.attr("in_order", "chw")
        if len(chw) != 3 or min(chw) < 1 or chw[0] * chw[1] * chw[2] != k or cout < 1:
            raise step.error(f"in_chw {chw} must be three positive dims whose product is k = {k}; cout >= 1")
        if order not in ("chw", "hwc"):
            raise step.error(f"in_order must be 'chw' or 'hwc', got {order!r}")
        c, h, w_ = chw
        xs = step.in_shapes[0]
        kw = h * w_ * nwords(c)
        if xs is None or len(xs) < 2 or int(np.prod(xs[1:])) != kw:
            raise step.error(f"X must be packed [N, {kw}] words for in_chw {chw}, got {xs}")
        n = xs[0]
        check_input(step, 0, "X", tuple(xs), "uint64")
        self.has_xm = has_input(step, 1)
        if self.has_xm:
            check_input(step, 1, "X_mask", tuple(xs), "uint64")
        self.stage = OutputStage(step, 4, cout)
        check_outputs(step, self.stage.out_shapes((n, cout), (n, nwords(cout))))

        vals = weight_values(step, 2, (cout, k))
        vals = vals.reshape(cout, c, h, w_).transpose(0, 2, 3, 1) if order == "chw" else vals.reshape(cout, h, w_, c)
        signs, masks = pack_last(vals)  # [Cout, H, W, words]: the physical input order
        # mask mode: 1 activation mask, 2 weight mask (ternary), 3 both
        self.masked = (1 if self.has_xm else 0) | (2 if has_input(step, 3) else 0)
        self.w = np.ascontiguousarray(signs.reshape(cout, kw))
        self.wm, self.wcnt = self.w[:1].copy(), np.zeros(1, np.int64)
        if self.masked & 2:
            self.wm = np.ascontiguousarray(masks.reshape(cout, kw))
            self.wcnt = (vals != 0).reshape(cout, -1).sum(axis=1, dtype=np.int64)
        # counts along the output channels (a vector of channels per input word) when there are
        # enough of them; along the input words (a reduction per channel) otherwise
        along = not self.masked & 2 and cout >= CHANNEL_RUN
        self.wt = np.ascontiguousarray(self.w.T) if along else np.zeros((0, 0), np.uint64)
        self.k, self.n, self.kw, self.cout = k, n, kw, cout
        self.work = n * self.w.size  # word operations

    def _block(self, threads: int) -> int:
        """Output channels per task: about four tasks per thread, whole words for the bits output;
        with one thread, blocks whose weights fill the L1 cache (read once per row of x), so
        a small layer is one block (CNV's 256 x 256: 4 blocks 4.9 us, one 3.9 us)."""
        per = -(-self.cout // (4 * threads)) if threads > 1 else max(1, L1_WEIGHTS // (8 * self.kw))
        words = self.stage.mode != FLOAT or self.stage.also_bits  # no two tasks write one word
        return -(-per // 64) * 64 if words else max(8, per)

    def emit(self, e, ins, outs):
        x = Expr(f"{ins[0]}.reshape(({self.n}, {self.kw}))")
        xm = Expr(f"{ins[1]}.reshape(({self.n}, {self.kw}))") if self.has_xm else x
        st = self.stage
        y, yb, ym = st.buffers(outs, 2)
        e.call(_binary_dense, x, xm, self.w, self.wm, self.wcnt, self.wt, self.k, self.masked, self._block(task_threads(self.work, e.threads)), st.mode,
               st.out_mask, st.scale, st.bias, st.table, y, yb, ym, st.residual_expr(ins, 2), st.residual,
               st.bits_zero, work=self.work)

    def run(self, ins, outs, scratch):
        x = np.ascontiguousarray(ins[0]).reshape(self.n, self.kw)
        xm = np.ascontiguousarray(ins[1]).reshape(self.n, self.kw) if self.has_xm else x
        st = self.stage
        y, yb, ym = st.buffers(outs, 2)
        _binary_dense(self.work, x, xm, self.w, self.wm, self.wcnt, self.wt, self.k, self.masked,
                      self._block(task_threads(self.work, current_threads())), st.mode, st.out_mask, st.scale, st.bias, st.table, y, yb, ym,
                      st.residual_of(ins, 2), st.residual, st.bits_zero)
