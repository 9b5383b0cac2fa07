"""The output stage of BinaryConv's panel path (binary_conv_panel.py): a band's counts to outputs.

The tile leaves ``acc[c, q]``, the count of channel c at band pixel q. The band's pixels fall
into runs whose border-table entries are contiguous (``band_runs``): a border row, a run of
interior rows (the table's tiled interior row), or, with a whole-image table, the whole band.
Channel by channel and run by run, ``emit_band`` computes

    s = tb[c, b0 + j] - mult * acc[c, q0 + j]

and writes ``float32(s) * scale[c] + bias[c] (+ R)`` (``binary_span.span_float``: vectors from
a run's first pixel to its last, so that rows of 7 to 56 pixels do not fall to a scalar loop);
or (bits) the rule's flags, eight channels at a time (``binary_span.span_bits``: a pixel's eight
flags in a 32-bit lane, one 64-bit OR per pixel and block; CNV's 10x10 layer 154 -> 130 us, its
first binary layer 417 -> 358 us), channel by channel past the last whole block or where the
rows would crowd the L1 cache's sets (as below). When the float output also has a binarized twin, its sign and
nonzero bits go with it, eight channels at a time: ``binary_span.span_block`` computes a
block's eight rows in one pass per run and takes their bits from the values still in registers,
a pixel's eight bits in one 32-bit lane (as wide as the floats), and one 64-bit OR per pixel
puts them into its words (``or_flag_rows``). Measured on a band of 128 channels x 196 pixels,
R in the output's buffer: 15.8 -> 13.3 us; in-process on Bi-Real Net 18's panel convs, the
kernel alone, 1.01-1.04x. Where a block's rows would fall into few sets of the L1 cache (rows
4 KB apart and multiples of it, ``_spread``) or the group has no whole blocks, a pass per
channel writes the floats and a second pass takes the bits of eight rows (``_or_sign_block``,
the same 32-bit lanes). A float output alone goes channel by channel (in blocks it measured
5-10% slower on these shapes).
(Taking the bits in a pass per channel, ORed into the 64-bit words, measured 10-30% slower:
that loop mixes float and 64-bit lanes.) The bits of a word's 64 channels gather in the word
rows ``pk`` and are stored once the word is complete (the task owns whole words). Bit
convention: runtime/bitpack.py.

The counts are int32 (the tile stores them so: half the bytes of int64 between the tile and
this stage). The session's plan may give the float output R's own buffer (R dies at this step:
``BinaryConv.overwritable_input``): the span reads R's vector at a pixel before it stores the
output's there, so one buffer for both is safe, and R was just written, so it is in cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from runtime.kernels.binary_common import BITS, NO_BITS, or_sign_planes, rule_flag, rule_of, sign_flags
from runtime.kernels.binary_span import BLOCK, span_bits, span_block, span_float
from runtime.kernels.binary_tile import prefetch_write

AHEAD = 2  # the output stage prefetches the float output rows of the channel this far ahead
WHOLE_TABLE_BYTES = 128 * 1024  # up to this size a border table has a row per output row
# (a bigger one, read cold from memory on every run, costs more than the passes it saves)


def table_layout(base: np.ndarray, rcls: np.ndarray, interior: np.ndarray, rows: int) -> tuple:
    """(tb, rcls, irun) for ``band_runs`` from a border table ``base[c, r, ow]`` (int32, a row per
    row class r), ``rcls[oh]`` the class of output row oh and ``interior[oh]`` whether its taps
    all fall inside the input, for bands of up to ``rows`` rows. A table of up to
    WHOLE_TABLE_BYTES gets a row per output row (rcls[oh] = oh, no interior rows): the output
    stage then runs each channel's band in one pass, which the few pixels per row of a small
    image need (a pass per row costs more than its pixels there); its rows get unused columns
    at their ends where they would fall a multiple of 2 KB apart (STE CNN's 32x32 layer: 4 KB),
    so that the bits stage takes them eight at a time (``_spread``). A bigger one keeps a row per
    class, the interior class's row tiled ``irun`` times at its end (rcls -1: interior rows)."""
    cout, _, ow_ = base.shape
    oh_ = rcls.shape[0]
    rcls = rcls.reshape(-1).astype(np.int64)
    if base.nbytes * oh_ // base.shape[1] <= WHOLE_TABLE_BYTES:
        whole = base[:, rcls].reshape(cout, -1)
        width = whole.shape[1]  # rows a multiple of 4 KB apart would keep the bits stage's blocks
        while not _spread(width * whole.itemsize):  # off them (``_spread``): a cache line of unused
            width += 64 // whole.itemsize  # columns after each row (no interior rows: no run reads them)
        tb = np.zeros((cout, width), base.dtype)
        tb[:, :whole.shape[1]] = whole
        return tb, np.arange(oh_, dtype=np.int64), 0
    irun = 0
    if interior.any():
        irun = min(rows, oh_)
        base = np.concatenate([base, np.tile(base[:, rcls[interior][0]][:, None], (1, irun, 1))], axis=1)
        rcls[interior] = -1
    return np.ascontiguousarray(base.reshape(cout, -1)), rcls, irun


@njit(cache=True)
def band_runs(rcls, oh0, oh1, ow_, irun, ioff, runs) -> int:
    """Split the band of output rows oh0 .. oh1 - 1 into runs of rows whose border-table entries
    follow one another: runs[i] = (q0, q1, b0), band pixels q0 .. q1 - 1 at table columns b0 ..
    b0 + q1 - q0 - 1. Interior rows (rcls -1) take up to ``irun`` rows of the tiled interior row
    at column ``ioff``; other rows, those whose class rows follow one another. Returns the count
    of runs."""
    n = 0
    r0 = oh0
    while r0 < oh1:
        r1 = r0 + 1
        if rcls[r0] < 0:
            while r1 < oh1 and r1 - r0 < irun and rcls[r1] < 0:
                r1 += 1
            b0 = ioff
        else:
            while r1 < oh1 and rcls[r1] == rcls[r0] + (r1 - r0):
                r1 += 1
            b0 = rcls[r0] * ow_
        runs[n, 0] = (r0 - oh0) * ow_
        runs[n, 1] = (r1 - oh0) * ow_
        runs[n, 2] = b0
        n += 1
        r0 = r1
    return n


@njit(cache=True, inline="always")
def _span_bits(b, a, pp, mult, rule, sh) -> None:
    """OR the rule's flag of s = b - mult * a at bit sh of pp along one run of pixels."""
    lo, hi, f_below, f_mid, f_above = rule
    for p in range(a.shape[0]):
        f = rule_flag(b[p] - mult * a[p], lo, hi, f_below, f_mid, f_above)
        pp[p] |= np.uint64(f & 1) << sh


@njit(cache=True, inline="always")
def or_flag_rows(fl, np_, sh, pk, two=True) -> None:
    """OR the uint32 bit rows fl[0] (and, when ``two``, fl[1]; a pixel's bits of a block of
    channels) at bit sh of the word rows pk[0] (and pk[1]): one 64-bit OR per pixel and block,
    not per channel."""
    f0, p0 = fl[0], pk[0]
    if two:
        f1, p1 = fl[1], pk[1]
        for p in range(np_):
            p0[p] |= np.uint64(f0[p]) << sh
            p1[p] |= np.uint64(f1[p]) << sh
    else:
        for p in range(np_):
            p0[p] |= np.uint64(f0[p]) << sh


@njit(cache=True, inline="always")
def _flags32(v, bz, r):
    """The sign and nonzero flags of the float v (its value at 0 ``bz``) at bit r of two uint32."""
    f, m = sign_flags(v, bz)
    return np.uint32(f & 1) << np.uint32(r), np.uint32(m & 1) << np.uint32(r)


@njit(cache=True, inline="always")
def _or_sign_block(y0, y1, y2, y3, y4, y5, y6, y7, np_, bz, sh, pk, fl) -> None:
    """OR the sign (plane 0) and nonzero (plane 1) bits of BLOCK = 8 channel rows of floats
    y0 .. y7 (their value at 0 ``bz``) at bits sh .. sh + 7 of the word rows pk[0] and pk[1]: a
    pixel's bits of the block gather in 32-bit lanes (as wide as the floats) into the rows
    fl[0] and fl[1] (uint32), and a second loop ORs them into its words, one 64-bit OR each
    where a pass per channel takes one per channel. (The ORs into the 64-bit words in the first
    loop made LLVM run it four pixels at a time, in 64-bit lanes: 1.4-1.5x slower.) Eight rows
    of their own (not a 2-D view, whose strides LLVM cannot vectorise over)."""
    f0, f1 = fl[0], fl[1]
    for p in range(np_):
        n0, z0 = _flags32(y0[p], bz, 0)
        n1, z1 = _flags32(y1[p], bz, 1)
        n2, z2 = _flags32(y2[p], bz, 2)
        n3, z3 = _flags32(y3[p], bz, 3)
        n4, z4 = _flags32(y4[p], bz, 4)
        n5, z5 = _flags32(y5[p], bz, 5)
        n6, z6 = _flags32(y6[p], bz, 6)
        n7, z7 = _flags32(y7[p], bz, 7)
        f0[p] = n0 | n1 | n2 | n3 | n4 | n5 | n6 | n7
        f1[p] = z0 | z1 | z2 | z3 | z4 | z5 | z6 | z7
    or_flag_rows(fl, np_, sh, pk)


@njit(cache=True, inline="always")
def _prefetch_rows(y3, r3, has_r, n, c, p0, np_) -> None:
    """Prefetch channel c's output (and residual) lines at pixels p0 .. p0 + np_ - 1 of image n."""
    at = (n * y3.shape[1] + c) * y3.shape[2] + p0
    for q in range(0, np_ + 15, 16):
        prefetch_write(y3, at + min(q, np_ - 1))
        if has_r:
            prefetch_write(r3, at + min(q, np_ - 1))


@njit(cache=True, inline="always")
def _put_word(dst, src, q, np_, merge) -> None:
    """dst[p, q] = src[p] (ORed in when ``merge``) for p < np_."""
    if merge:
        for p in range(np_):
            dst[p, q] |= src[p]
    else:
        for p in range(np_):
            dst[p, q] = src[p]


@njit(cache=True)
def store_words(pk, yb3, ym3, out_mask, n, p0, np_, q, merge) -> None:
    """Word q of the band's np_ pixels (image pixels p0 ..) of image n from pk's word rows, ORed
    into the word there when ``merge`` (its lower channels are another group's), else stored."""
    _put_word(yb3[n, p0:p0 + np_], pk[0], q, np_, merge)
    if out_mask:
        _put_word(ym3[n, p0:p0 + np_], pk[1], q, np_, merge)


@njit(cache=True, inline="always")
def band_views(y, res, yb, ym):
    """The outputs (and the residual) with each image's pixels on one axis, as ``emit_band``
    takes them: y and res [N, C, OH*OW], yb and ym [N, OH*OW, words]."""
    return (y.reshape((y.shape[0], y.shape[1], y.shape[2] * y.shape[3])),
            res.reshape((res.shape[0], res.shape[1], res.shape[2] * res.shape[3])),
            yb.reshape((yb.shape[0], yb.shape[1] * yb.shape[2], yb.shape[3])),
            ym.reshape((ym.shape[0], ym.shape[1] * ym.shape[2], ym.shape[3])))


@njit(cache=True, inline="always")
def _spread(stride) -> bool:
    """Whether BLOCK rows ``stride`` bytes apart fall into 4 or more sets of a 4 KB cache way
    (64-byte lines): a block's rows in fewer sets evict one another from the L1 cache (rows of
    32x32 or 64x64 floats, 4 or 16 KB apart, ran 1.3-2x slower in blocks than channel by
    channel; rows 1 KB apart as fast, 256 bytes apart 1.8x faster)."""
    n = 0
    for j in range(BLOCK):  # rows in a set no row before them is in
        first = True
        for i in range(j):
            first = first and (i * stride) % 4096 // 64 != (j * stride) % 4096 // 64
        n += first
    return n >= 4


@njit(cache=True, inline="always")
def _emit_block(acc, tb, runs, nr, mult, c, i, n, p0, np_, onto, ahead, scale, bias, y3, r3, has_r, bz, pk, fl) -> None:
    """Float channels c .. c + BLOCK - 1 (rows i .. of acc) of ``emit_band`` and their sign and
    nonzero bits (``binary_span.span_block``), ORed into pk's word rows; the next
    block's output rows prefetched when ``ahead`` (and they are not R's, just written)."""
    if ahead and not onto:
        for j in range(BLOCK):
            _prefetch_rows(y3, r3, has_r, n, c + BLOCK + j, p0, np_)
    for k in range(nr):
        q0, q1, b0 = runs[k, 0], runs[k, 1], runs[k, 2]
        yb = y3[n, c:c + BLOCK, p0 + q0:p0 + q1]
        span_block(tb[c:c + BLOCK, b0:b0 + q1 - q0], acc[i:i + BLOCK, q0:q1], yb, r3[n, c:c + BLOCK, p0 + q0:p0 + q1] if has_r else yb,
                   has_r, mult, scale[c:c + BLOCK], bias[c:c + BLOCK], bz, fl[:, q0:q1])
    or_flag_rows(fl, np_, np.uint64(c & 63), pk)


@njit(cache=True, inline="always")
def _emit_bits_block(acc, tb, runs, nr, mult, table, c, i, np_, out_mask, pk, fl) -> None:
    """The rule's bits of channels c .. c + BLOCK - 1 (rows i .. of acc) of ``emit_band`` in
    bits mode (``binary_span.span_bits``), ORed into pk's word rows (the mask's too when
    ``out_mask``)."""
    for k in range(nr):
        q0, q1, b0 = runs[k, 0], runs[k, 1], runs[k, 2]
        span_bits(tb[c:c + BLOCK, b0:b0 + q1 - q0], acc[i:i + BLOCK, q0:q1], mult, table[:, c:c + BLOCK], out_mask, fl[:, q0:q1])
    or_flag_rows(fl, np_, np.uint64(c & 63), pk, out_mask)


@njit(cache=True)
def emit_band(acc, tb, runs, nr, mult, c0, c1, n, p0, np_, mode, out_mask, scale, bias, table, y3, yb3, ym3, r3, has_r, bz,
              pk, fl) -> None:
    """Channels c0 .. c1 - 1 (rows of acc from 0) at the band's np_ pixels (image pixels p0 ..,
    contiguous in acc's rows) of image n, its ``nr`` runs in ``runs`` (``band_runs``), through the
    output stage (module docstring; binary_common): y3 [N, C, OH*OW], yb3/ym3 [N, OH*OW, words],
    r3 the residual as y3 (or y3 itself); pk [2, >= np_] uint64 and fl [2, >= np_] uint32
    scratch. The float output rows of the channel AHEAD further on (of the next block, in
    blocks) are prefetched, unless they are R's (just written): an output buffer not in the
    cache otherwise waits on every channel's lines. Channels c0 .. c1 - 1 may be a group that
    shares its first and last bits words with the groups beside it (the narrow path,
    binary_conv_narrow.py): called for the groups in order, the group that holds a word's
    channel 0 stores it, the next ones OR theirs into it."""
    bits = mode == BITS or bz != NO_BITS
    onto = has_r and y3.ctypes.data == r3.ctypes.data  # R's buffer is the output's
    blocked = bits and c0 % BLOCK == 0  # blocks from c0: none across a word
    blocked = blocked and (mode == BITS or _spread(y3.strides[1])) and _spread(acc.strides[0]) and _spread(tb.strides[0])
    blocks = (c1 - c0) // BLOCK * BLOCK if blocked else 0  # channels taken in blocks
    for i in range(c1 - c0):
        c = c0 + i
        a = acc[i]
        sh = np.uint64(c & 63)
        if (c & 63) == 0 or i == 0:
            pk[:, :np_] = 0
        if i < blocks and mode == BITS:
            if i % BLOCK == 0:
                _emit_bits_block(acc, tb, runs, nr, mult, table, c, i, np_, out_mask, pk, fl)
        elif i < blocks:
            if i % BLOCK == 0:
                _emit_block(acc, tb, runs, nr, mult, c, i, n, p0, np_, onto, i + 2 * BLOCK <= blocks, scale, bias, y3, r3, has_r, bz,
                            pk, fl)
        else:
            if mode != BITS and not onto and i + AHEAD < c1 - c0:  # R's buffer was just written: in the cache
                _prefetch_rows(y3, r3, has_r, n, c + AHEAD, p0, np_)
            yr = y3[n, c, p0:p0 + np_] if mode != BITS else y3[0, 0, :np_]
            rr = r3[n, c, p0:p0 + np_] if has_r else r3[0, 0, :np_]
            for plane in range(1 if mode != BITS else (2 if out_mask else 1)):
                rule = rule_of(table, c if mode == BITS else 0, plane)  # the float stage's table is a [8, 1] stand-in
                for k in range(nr):
                    q0, q1, b0 = runs[k, 0], runs[k, 1], runs[k, 2]
                    b = tb[c, b0:b0 + q1 - q0]
                    if mode == BITS:
                        _span_bits(b, a[q0:q1], pk[plane, q0:q1], mult, rule, sh)
                    else:
                        span_float(b, a[q0:q1], yr[q0:q1], rr[q0:q1], has_r, mult, scale[c], bias[c])
            if mode != BITS and bz != NO_BITS:
                if i >= (c1 - c0) // BLOCK * BLOCK or c0 % BLOCK:  # after the last whole block, or no blocks
                    or_sign_planes(yr, np_, bz, sh, pk)
                elif (i + 1) % BLOCK == 0:  # blocks from c0, a multiple of BLOCK: none straddles a word
                    y8 = y3[n, c + 1 - BLOCK:c + 1]
                    _or_sign_block(y8[0, p0:p0 + np_], y8[1, p0:p0 + np_], y8[2, p0:p0 + np_], y8[3, p0:p0 + np_], y8[4, p0:p0 + np_],
                                   y8[5, p0:p0 + np_], y8[6, p0:p0 + np_], y8[7, p0:p0 + np_], np_, bz, np.uint64((c + 1 - BLOCK) & 63),
                                   pk, fl)
        if bits and ((c & 63) == 63 or c == c1 - 1):
            store_words(pk, yb3, ym3, out_mask, n, p0, np_, c >> 6, (c >> 6) == (c0 >> 6) and (c0 & 63) != 0)
