"""bnnc.Binarize, bnnc.BitMaxPool: moving from float to packed tensors, and
max pooling on packed ones (bit convention: runtime/bitpack.py).

- Binarize: x < 0 -> -1 (bit 1); x > 0 -> +1; x == 0 -> attribute ``zero`` (+1, -1, or 0 with
  the nonzero-mask output); NaN is treated like 0, as in bnnc.ops.binarize. Each task packs one image row: for 64 channels at a time it ORs
  ``(x[c, h, :] < 0) << bit`` into a row of words, contiguous loads that vectorise.
- BitMaxPool: the max of +-1 values is -1 only when all are -1, so the result bit is the AND of
  the window's bits. With nonzero masks (values in {-1, 0, +1}): the max is +1 if any value is
  +1 (mask & ~sign), -1 if all are -1 (AND of mask & sign), else 0. Channels flagged in the
  optional ``invert`` bits take the min instead: -1 if any is -1 (OR of the bits), else 0 if any
  is 0, else +1. Padding is ignored, as in ONNX MaxPool.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from runtime.bitpack import nwords, tail_mask
from runtime.kernels.base import Kernel, Step, Twin, register, task_threads
from runtime.kernels.binary_common import (
    check_outputs,
    const_input,
    dummy,
    has_input,
    packed_image_input,
    window_attrs,
)
from runtime.kernels.binary_conv_stage import or_flag_rows
from runtime.kernels.binary_span import BLOCK, span_signs
from runtime.kernels.pool_emit import emit_bit_pool, fits


# -- Binarize -----------------------------------------------------------------------------------
@Twin
def _binarize_nchw(x, zero, y, ym, with_mask):
    """A row of pixels (n, h) at a time: its 64-channel words gather in sacc (and macc, the
    nonzero mask), eight channels a pass (``binary_span.span_signs``: the eight bits in 32-bit
    lanes, one 64-bit OR per pixel), the channels past the last whole eight one by one."""
    n_, c_, h_, w_ = x.shape
    wc = y.shape[3]
    nonzero = with_mask and zero == 0  # a mask of the values' zeros (zero = +-1: all valid bits)
    for r in prange(n_ * h_):
        n = r // h_
        h = r % h_
        words = np.empty((2, w_), np.uint64)
        sacc, macc = words[0], words[1]
        fl = np.empty((2, w_), np.uint32)
        for q in range(wc):
            nb = min(64, c_ - q * 64)
            sacc[:] = 0
            # zero = +-1: every value is nonzero, the mask word is all valid bits
            macc[:] = np.uint64(0) if zero == 0 else (np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - nb))
            blocks = nb // BLOCK * BLOCK
            for b in range(0, blocks, BLOCK):
                span_signs(x[n, q * 64 + b:q * 64 + b + BLOCK, h, :], zero, nonzero, fl)
                or_flag_rows(fl, w_, np.uint64(b), words, nonzero)
            for b in range(blocks, nb):
                c = q * 64 + b
                sh = np.uint64(b)
                if zero == -1:
                    for w in range(w_):
                        sacc[w] |= np.uint64(not x[n, c, h, w] > 0) << sh
                else:
                    for w in range(w_):
                        sacc[w] |= np.uint64(x[n, c, h, w] < 0) << sh
                if nonzero:
                    for w in range(w_):
                        v = x[n, c, h, w]
                        macc[w] |= np.uint64((v > 0) | (v < 0)) << sh
            for w in range(w_):
                y[n, h, w, q] = sacc[w]
            if with_mask:
                for w in range(w_):
                    ym[n, h, w, q] = macc[w]


@Twin
def _binarize_nc(x, zero, y, ym, with_mask):
    n_, c_ = x.shape
    wc = y.shape[1]
    for r in prange(n_ * wc):
        n = r // wc
        q = r - n * wc
        xr = x[n, q * 64:min(c_, q * 64 + 64)]  # a contiguous view indexed by its range: vectorises
        s = np.uint64(0)
        m = np.uint64(0)
        if zero == -1:
            for b in range(xr.shape[0]):
                s |= np.uint64(not xr[b] > 0) << np.uint64(b)
        else:
            for b in range(xr.shape[0]):
                s |= np.uint64(xr[b] < 0) << np.uint64(b)
        y[n, q] = s
        if with_mask:
            for b in range(xr.shape[0]):
                v = xr[b]
                m |= np.uint64((v > 0) | (v < 0) | (zero != 0)) << np.uint64(b)
            ym[n, q] = m


def binarize(x: np.ndarray, zero: int, y: np.ndarray, ym: np.ndarray | None) -> None:
    """Pack float32 ``x`` (NCHW or NC) into ``y`` (and the nonzero mask into ``ym``)."""
    assert x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.uint64
    assert zero in (1, -1, 0) and (ym is not None or zero != 0)
    with_mask = ym is not None
    ym = ym if with_mask else dummy(y.ndim, np.uint64)
    (_binarize_nchw if x.ndim == 4 else _binarize_nc)(x.size, x, zero, y, ym, with_mask)


@register("bnnc.Binarize")
class Binarize(Kernel):
    n_outputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        self.zero = int(step.attr("zero", 1))
        if self.zero not in (1, -1, 0):
            raise step.error(f"zero must be 1, -1 or 0, got {self.zero}")
        xs = step.in_shapes[0]
        if xs is None or len(xs) not in (2, 4) or step.in_dtypes[0] != "float32":
            raise step.error(f"X must be float32 of rank 2 or 4, got {step.in_dtypes[0]} {xs}")
        packed = (xs[0], xs[2], xs[3], nwords(xs[1])) if len(xs) == 4 else (xs[0], nwords(xs[1]))
        n_out = len(step.out_shapes)
        if self.zero == 0 and n_out != 2:
            raise step.error("zero = 0 maps exact zeros to 0, which needs the mask output Y_mask")
        check_outputs(step, [(packed, "uint64")] * max(1, min(n_out, 2)))

    def emit(self, e, ins, outs):
        x, y = ins[0], outs[0]
        with_mask = len(outs) > 1 and outs[1] is not None
        ndim = len(self.step.in_shapes[0])
        ym = outs[1] if with_mask else dummy(ndim, np.uint64)
        e.call(_binarize_nchw if ndim == 4 else _binarize_nc, x, self.zero, y, ym, with_mask,
               work=math.prod(self.step.in_shapes[0]))

    def run(self, ins, outs, scratch):
        binarize(np.ascontiguousarray(ins[0]), self.zero, outs[0], outs[1] if len(outs) > 1 else None)


# -- BitMaxPool ---------------------------------------------------------------------------------
@Twin
def _bit_maxpool(x, xm, inv, geom, masked, y, ym):
    """Per output word, the window's bit sets in registers. The plan function writes its own
    loops for pools without a mask (``BitMaxPool.emit``); this kernel serves the others and
    steps run one by one."""
    kh_, kw_, sh, sw, dh, dw, pt, pl = geom
    n_, h_, w_, wc = x.shape
    oh_, ow_ = y.shape[1], y.shape[2]
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    for r in prange(n_ * oh_):
        n = r // oh_
        oh = r % oh_
        kh0 = max(0, (pt - oh * sh + dh - 1) // dh)  # the window's rows inside x: kh in [kh0, kh1)
        kh1 = min(kh_, (h_ - 1 - oh * sh + pt) // dh + 1)
        for ow in range(ow_):
            for q in range(wc):
                all_neg = ones  # AND over the window of "value is -1"
                any_neg = np.uint64(0)  # OR of "value is -1"
                any_pos = np.uint64(0)  # OR of "value is +1" (masked only)
                all_nz = ones  # AND of "value is nonzero" (masked only)
                for kh in range(kh0, kh1):
                    ih = oh * sh - pt + kh * dh
                    for kw in range(kw_):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= w_:  # a compare, not a division per pixel (4x slower)
                            continue
                        s = x[n, ih, iw, q]
                        if masked:
                            m = xm[n, ih, iw, q]
                            s &= m
                            any_pos |= m & ~s
                            all_nz &= m
                        all_neg &= s
                        any_neg |= s
                # max: -1 only if all are -1; min (inverted channels): -1 if any is -1
                y[n, oh, ow, q] = (all_neg & ~inv[q]) | (any_neg & inv[q])
                if masked:  # (else ym is y)
                    # max nonzero: any +1 or all -1; min nonzero: any -1 or all nonzero (+1)
                    ym[n, oh, ow, q] = ((any_pos | all_neg) & ~inv[q]) | ((any_neg | all_nz) & inv[q])


def bit_maxpool(x: np.ndarray, xm: np.ndarray | None, inv: np.ndarray, geom: tuple, y: np.ndarray,
                ym: np.ndarray | None) -> None:
    """Max pool packed ``x`` [N, H, W, words] into ``y`` (min pool on the channels whose bit is
    set in ``inv`` [words]); geom = (kh, kw, sh, sw, dh, dw, pt, pl). Every window must hold at
    least one element of ``x`` (checked when the kernel is built)."""
    assert x.dtype == np.uint64 and x.flags.c_contiguous and y.dtype == np.uint64 and len(geom) == 8
    assert inv.dtype == np.uint64 and inv.shape == (x.shape[3],)
    masked = xm is not None
    assert masked == (ym is not None)
    _bit_maxpool(y.size * geom[0] * geom[1], x, xm if masked else x, inv, geom, masked, y, ym if masked else y)


def _pool_extent(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """ONNX MaxPool output size (with ceil_mode, a window starting in the end padding is dropped)."""
    num = size + p0 + p1 - d * (k - 1) - 1
    o = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (o - 1) * s >= size + p0:
        o -= 1
    return o


def _window_ok(o: int, size: int, k: int, s: int, d: int, p0: int) -> bool:
    return all(any(0 <= i * s - p0 + t * d < size for t in range(k)) for i in range(o))


@register("bnnc.BitMaxPool")
class BitMaxPool(Kernel):
    n_inputs = (1, 3)  # X, X_mask, invert
    n_outputs = (1, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = window_attrs(step)
        ceil_mode = bool(int(step.attr("ceil_mode", 0)))
        c = int(step.attr("channels", 0))
        if min(kh, kw, sh, sw, dh, dw, c) < 1 or min(pt, pl, pb, pr) < 0:
            raise step.error("kernel_shape, strides, dilations, channels must be positive and pads >= 0")
        n, h, w_, self.masked = packed_image_input(step, c)
        oh = _pool_extent(h, kh, sh, dh, pt, pb, ceil_mode)
        ow = _pool_extent(w_, kw, sw, dw, pl, pr, ceil_mode)
        if oh < 1 or ow < 1 or not (_window_ok(oh, h, kh, sh, dh, pt) and _window_ok(ow, w_, kw, sw, dw, pl)):
            raise step.error("some pooling window lies entirely in the padding")
        if not self.masked and len(step.out_shapes) != 1:
            raise step.error("Y_mask needs the input X_mask")
        if self.masked and len(step.out_shapes) != 2:
            raise step.error("X has a nonzero mask, so zeros can reach the output: Y_mask is required")
        check_outputs(step, [((n, oh, ow, nwords(c)), "uint64")] * (2 if self.masked else 1))
        self.geom = (kh, kw, sh, sw, dh, dw, pt, pl)
        self.pads = (pt, pl, pb, pr)
        self.inv = np.zeros(nwords(c), np.uint64)
        if has_input(step, 2):
            inv = const_input(step, 2, "invert", "uint64").reshape(-1)
            if inv.size != nwords(c):
                raise step.error(f"invert must hold {nwords(c)} words (one bit per channel), got {inv.size}")
            self.inv = inv & tail_mask(c)

    def emit(self, e, ins, outs):
        x, y = ins[0], outs[0]
        work = math.prod(self.step.out_shapes[0]) * self.geom[0] * self.geom[1]
        kh, kw, sh, sw, dh, dw, _, _ = self.geom
        x4, y4 = self.step.in_shapes[0], self.step.out_shapes[0]
        window = ((kh, kw), (sh, sw), (dh, dw), self.pads)
        # fits reads (N, C, H, W) shapes: the words in C's place
        if not self.masked and fits((x4[0], x4[3], x4[1], x4[2]), (y4[0], y4[3], y4[1], y4[2]), *window):
            emit_bit_pool(e, x, y, x4, y4, *window, self.inv, task_threads(work, e.threads))
            return
        xm, ym = (ins[1], outs[1]) if self.masked else (x, y)
        e.call(_bit_maxpool, x, xm, self.inv, self.geom, self.masked, y, ym, work=work)

    def run(self, ins, outs, scratch):
        xm = np.ascontiguousarray(ins[1]) if self.masked else None
        bit_maxpool(np.ascontiguousarray(ins[0]), xm, self.inv, self.geom, outs[0], outs[1] if self.masked else None)
