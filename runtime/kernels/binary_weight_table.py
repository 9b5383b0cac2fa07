"""Binary-weight convolution by sign tables: additions instead of multiply-adds.

With weights in {-1, +1} (times a scale per output channel), ``y[m, i] = act(scale[m] * sum_k
s[m, k] * x_k[i] + bias[m])``, s[m, k] the sign of tap k of output channel m and x_k[i] the input
tap k reads for output position i (the wide rows of the zero-padded, stride-phase-split input,
runtime/kernels/conv_tile.py: ``x_k[i] = xq[offs[k] + i]``, one contiguous run per tap).

The taps are cut into groups of G. For a block of P consecutive positions and one group q, the
2^G vectors

    T[q, code] = sum_{j < G} (bit j of code ? -x_{qG+j} : +x_{qG+j})      (bit 1 means -1, as in
                                                                          runtime/bitpack.py)

hold every signed sum the group can contribute, and output channel m adds the one its weights
select: ``acc[m] += T[q, code[m, q]]``, one vector load and add for G multiply-adds. Since
T[q, ~code] = -T[q, code], only the H = 2^(G-1) entries with the top bit clear are stored, and
a channel whose code has it set adds -1 times the complement's entry (a multiply-add by +-1,
exact). The entries are built in registers, one subtraction each (Gray order: T[c] = T[c - 2^j]
- 2 x_j, j the lowest bit of c), H vector stores per group shared by all output channels. The
taps past K (K rounded up to a multiple of G) read a zero run at the end of xq. A tile
(``accumulate``) holds MR output channels x V vectors of positions in registers over a chunk of
QC groups, whose tables (QC * H * P floats) stay in L1; between chunks it keeps them in a small
buffer. Then ``y = act(acc * scale + bias)`` is written into the block's output rows (Relu
there, other activations over the rows afterwards). Blocks are runs of each image's wide rows,
or, where the wide columns would waste more than a copy costs (small planes), blocks of the
batch's positions packed into a panel, every tap's P values a row (``_pack``, as conv_panel.py).

G = 5 and P = 32 (MR = 8 channels x 2 vectors of 16) measured best on AVX-512 (Zen 4) among G =
3..6 with full or half tables, MR x V in 8x2, 12x2, 16x1, 24x1, 6x4, and chunks of 4..32 groups:
models/bwn.onnx's three convs 0.173 / 0.099 / 0.048 ms of CPU against 0.360 / 0.195 / 0.102 by
the float convolution (benchmarks/step_cpu.py, one thread).

Against the float path (runtime/kernels/conv.py, FMA-bound) this reads about 1/G of the vectors
and does 1/G of the arithmetic plus the tables; binary_weight.py decides where it pays. Results
differ from the float convolution only by float summation order.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.base import Twin
from runtime.kernels.conv_planes import pack_runs, split_input
from runtime.kernels.conv_tile import LANES, _isplat, _next_start_jit, _splat, _splat_bool
from runtime.kernels.nn import act_inplace

G = 5  # taps per group: tables of 2^(G-1) vectors
E = 1 << G
H = E // 2  # entries stored: the other half are their negatives
MR, V = {16: (8, 2), 8: (4, 3)}.get(LANES, (8, 3))  # output channels x position vectors per tile
P = V * LANES  # positions per block
RS = P + 8  # floats between panel rows: a block plus the spill of an 8-float copy (conv_panel.py)
QC = max(1, (16 << 10) // (H * P * 4))  # groups per chunk: its tables fill 16 KB of L1
_i32, _i64, _f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_VEC = ir.VectorType(_f32, LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)


def _vptr(builder, base, at):
    return builder.bitcast(builder.gep(base, [at]), _VEC.as_pointer())


def _c(v: int):
    return ir.Constant(_i64, v)


@intrinsic
def build_tables(typingctx, xq, xpos, offs, k0, nq, tab):
    """tab[(q * E + code) * P + p] = T[q0 + q, code] at position xpos + p, for q < nq (module
    docstring); the taps of group q0 + q are offs[k0 + q * G + j], j < G."""
    sig = types.void(xq, xpos, offs, k0, nq, tab)

    def codegen(context, builder, sig, args):
        xq_, xpos_, offs_, k0_, nq_, tab_ = args
        xb = builder.gep(context.make_array(sig.args[0])(context, builder, xq_).data, [xpos_])
        ob = builder.gep(context.make_array(sig.args[2])(context, builder, offs_).data, [k0_])
        tb = context.make_array(sig.args[5])(context, builder, tab_).data
        with cgutils.for_range(builder, nq_) as loop:
            q = loop.index
            taps = [builder.gep(xb, [builder.load(builder.gep(ob, [builder.add(builder.mul(q, _c(G)), _c(j))]))])
                    for j in range(G)]
            tq = builder.gep(tb, [builder.mul(q, _c(H * P))])
            for v in range(V):
                xs = [builder.load(_vptr(builder, t, _c(v * LANES)), align=4) for t in taps]
                twice = [builder.fadd(a, a) for a in xs]
                t = {0: xs[0]}
                for j in range(1, G):
                    t[0] = builder.fadd(t[0], xs[j])
                for code in range(1, E // 2):  # the top bit clear; the rest by negation
                    low = (code & -code).bit_length() - 1
                    t[code] = builder.fsub(t[code ^ (1 << low)], twice[low])
                for code in range(H):
                    builder.store(t[code], _vptr(builder, tq, _c(code * P + v * LANES)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def accumulate(typingctx, tab, idx, ipos, nq, acc, apos, first):
    """acc[apos + r * P + p] (+)= sum_{q < nq} tab[idx[ipos + q * MR + r] + p] for r < MR, p < P,
    in MR x V vector registers; ``first``: start from zero instead of acc."""
    sig = types.void(tab, idx, ipos, nq, acc, apos, first)

    def codegen(context, builder, sig, args):
        tab_, idx_, ipos_, nq_, acc_, apos_, first_ = args
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                                             f"llvm.fmuladd.v{LANES}f32")
        tb = context.make_array(sig.args[0])(context, builder, tab_).data
        ib = builder.gep(context.make_array(sig.args[1])(context, builder, idx_).data, [ipos_])
        ab = builder.gep(context.make_array(sig.args[4])(context, builder, acc_).data, [apos_])
        zero = ir.Constant(_VEC, [0.0] * LANES)
        fresh = builder.icmp_signed("!=", first_, ir.Constant(first_.type, 0))
        ptrs = [[_vptr(builder, ab, _c(r * P + v * LANES)) for v in range(V)] for r in range(MR)]
        accs = [[cgutils.alloca_once_value(builder, builder.select(fresh, zero, builder.load(p, align=4)))
                 for p in row] for row in ptrs]
        with cgutils.for_range(builder, nq_) as loop:
            qb = builder.gep(ib, [builder.mul(loop.index, _c(2 * MR))])
            for r in range(MR):
                tp = builder.gep(tb, [builder.sext(builder.load(builder.gep(qb, [_c(2 * r)])), _i64)])
                sign = _splat(builder, builder.bitcast(builder.load(builder.gep(qb, [_c(2 * r + 1)])), _f32))
                for v in range(V):
                    val = builder.load(_vptr(builder, tp, _c(v * LANES)), align=4)
                    builder.store(builder.call(fma, [val, sign, builder.load(accs[r][v])]), accs[r][v])
        for r in range(MR):
            for v in range(V):
                builder.store(builder.load(accs[r][v]), ptrs[r][v], align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _epilogue(typingctx, acc, apos, row, rpos, cnt, s, b, relu):
    """row[rpos + t] = acc[apos + t] * s + b (Relu when ``relu``: 0 for NaN too, as the other
    kernels) for t < cnt, in vectors of LANES, the last one a masked store (Numba's own loop
    leaves runs shorter than its unrolled vector loop to a scalar remainder). Reads up to
    LANES - 1 floats past acc's run."""
    sig = types.void(acc, apos, row, rpos, cnt, s, b, relu)

    def codegen(context, builder, sig, args):
        acc_, apos_, row_, rpos_, cnt_, s_, b_, relu_ = args
        ab = builder.gep(context.make_array(sig.args[0])(context, builder, acc_).data, [apos_])
        rb = builder.gep(context.make_array(sig.args[2])(context, builder, row_).data, [rpos_])
        sv, bv = _splat(builder, s_), _splat(builder, b_)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        no_relu = _splat_bool(builder, builder.icmp_signed("==", relu_, ir.Constant(relu_.type, 0)))
        lane = ir.Constant(ir.VectorType(_i64, LANES), list(range(LANES)))
        mask_store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VEC, _VEC.as_pointer(), _i32, _MASK]),
            f"llvm.masked.store.v{LANES}f32.p0v{LANES}f32")
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                                             f"llvm.fmuladd.v{LANES}f32")
        n = builder.sdiv(builder.add(cnt_, _c(LANES - 1)), _c(LANES))
        with cgutils.for_range(builder, n) as loop:
            at = builder.mul(loop.index, _c(LANES))
            val = builder.call(fma, [builder.load(_vptr(builder, ab, at), align=4), sv, bv])
            keep = builder.or_(builder.fcmp_ordered(">", val, zero), no_relu)
            val = builder.select(keep, val, zero)
            left = builder.sub(cnt_, at)
            mask = builder.icmp_signed("<", lane, _isplat(builder, left))
            builder.call(mask_store, [val, _vptr(builder, rb, at), ir.Constant(_i32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _store_wide(acc, y, pos, stop, Wq, scale, bias, relu):
    """y[m, oh, ow] = acc[m * P + i - pos] * scale[m] + bias[m] for the wide positions pos <= i <
    stop, i = oh * Wq + ow, that are not wide columns (ow < OW)."""
    M, OW = y.shape[0], y.shape[2]
    oh = pos // Wq
    ow = pos - oh * Wq
    i = pos
    while i < stop:
        seg = min(Wq - ow, stop - i)
        cnt = min(seg, OW - ow)
        for m in range(M):
            if cnt > 0:
                _epilogue(acc, m * P + i - pos, y[m, oh], ow, cnt, scale[m], bias[m], relu)
        i += seg
        oh += 1
        ow = 0


@njit(cache=True, nogil=True)
def _store_packed(acc, yf, q0, stop, scale, bias, relu):
    """yf (N, M, OH * OW)[n, m, p] = acc[m * P + q - q0] * scale[m] + bias[m] for the batch's
    positions q0 <= q = n * OH * OW + p < stop."""
    M, PP = yf.shape[1], yf.shape[2]
    q = q0
    while q < stop:
        n = q // PP
        p = q - n * PP
        cnt = min(PP - p, stop - q)
        for m in range(M):
            _epilogue(acc, m * P + q - q0, yf[n, m], p, cnt, scale[m], bias[m], relu)
        q += cnt


@njit(cache=True, nogil=True)
def _pack(xq, pan, offs, q0, PP, OW, Wq, Q):
    """pan[k * RS + j] = xq[n, offs[k] + oh * Wq + ow] for the batch's positions q0 + j = n * PP
    + oh * OW + ow < Q, j < P (conv_planes.pack_runs)."""
    pack_runs(xq, pan, offs, q0, PP, OW, Wq, Q, P, RS)


@njit(cache=True, nogil=True)
def _block(src, xpos, koffs, idx, tab, acc, nq, nmb):
    """acc = the sums of one block of P positions read at src[xpos + koffs[k] + j] (module
    docstring), chunk by chunk of QC groups."""
    for q0 in range(0, nq, QC):
        nqc = min(QC, nq - q0)
        build_tables(src, xpos, koffs, q0 * G, nqc, tab)
        for mb in range(nmb):
            accumulate(tab, idx, (mb * nq + q0) * 2 * MR, nqc, acc, mb * MR * P, q0 == 0)


@njit(cache=True, nogil=True)
def _packed_task(xq, offs, idx, scale, bias, yf, OW, Wq, kind, a0, a1, q_lo, q_hi):
    """yf's batch positions q_lo <= q < q_hi (``_conv_table_body``, packed blocks)."""
    PP, Q = yf.shape[2], yf.shape[0] * yf.shape[2]
    nq = offs.shape[0] // G
    nmb = idx.shape[0] // (nq * 2 * MR)
    pan = np.empty(offs.shape[0] * RS, np.float32)
    tab = np.empty(QC * H * P, np.float32)
    acc = np.empty(nmb * MR * P + LANES, np.float32)
    koffs = np.arange(offs.shape[0]) * RS
    for q0 in range(q_lo, q_hi, P):
        _pack(xq, pan, offs, q0, PP, OW, Wq, Q)
        _block(pan, 0, koffs, idx, tab, acc, nq, nmb)
        _store_packed(acc, yf, q0, min(q0 + P, q_hi), scale, bias, kind == 1)
    if kind > 1:
        for n in range(q_lo // PP, -(-q_hi // PP)):
            lo, hi = max(q_lo - n * PP, 0), min(q_hi - n * PP, PP)
            for m in range(yf.shape[1]):
                act_inplace(yf[n, m, lo:hi], kind, a0, a1)


@njit(cache=True, nogil=True)
def _wide_task(xq, offs, idx, scale, bias, y, Wq, kind, a0, a1, r0, r1):
    """Output rows r0 <= oh < r1 of one image y (M, OH, OW) from its planes xq
    (``_conv_table_body``, wide blocks)."""
    OW = y.shape[2]
    nq = offs.shape[0] // G
    nmb = idx.shape[0] // (nq * 2 * MR)
    tab = np.empty(QC * H * P, np.float32)
    acc = np.empty(nmb * MR * P + LANES, np.float32)
    end = (r1 - 1) * Wq + OW
    pos, oh, ow = r0 * Wq, r0, 0
    while pos < end:
        _block(xq, pos, offs, idx, tab, acc, nq, nmb)
        _store_wide(acc, y, pos, min(pos + P, end), Wq, scale, bias, kind == 1)
        pos, oh, ow = _next_start_jit(pos, oh, ow, Wq, OW, P)
    if kind > 1:
        yf = y.reshape(y.shape[0], y.shape[1] * OW)
        for m in range(y.shape[0]):
            act_inplace(yf[m, r0 * OW:r1 * OW], kind, a0, a1)


def _conv_table_body(x, xq, offs, idx, scale, bias, y, geo, kind, a0, a1, tasks, packed):
    """y (N, M, OH, OW) = act(conv(x) * scale + bias) by sign tables (module docstring); xq (N,
    planes + zero run) the phase-split images (conv_tile.geometry; padding and the zero run never
    written), offs the taps' offsets (padded to whole groups with the zero run's), idx the tiles'
    table offsets (``table_offsets``). ``packed``: blocks of the batch's positions through a panel
    (``_pack``), ``tasks`` runs of blocks; else blocks of each image's wide rows, ``tasks`` runs of
    rows per image. The tasks' bodies are functions of their own: a ``prange`` over a computed
    count (``0 if packed else ...``) ran its two tasks one after the other (0.20 ms where the
    split takes 0.09 ms at 2 threads)."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for nc in prange(N * C):
        split_input(x, xq, nc, geo)
    yf = y.reshape(N, M, OH * OW)
    if packed:
        Q = N * OH * OW
        blocks = -(-Q // P)
        per = -(-blocks // tasks) * P  # positions per task: whole blocks
        for t in prange(tasks):
            _packed_task(xq, offs, idx, scale, bias, yf, OW, geo[3], kind, a0, a1,
                         min(Q, t * per), min(Q, (t + 1) * per))
    else:
        rows = -(-OH // tasks)
        for task in prange(N * tasks):
            n = task // tasks
            r0 = (task - n * tasks) * rows
            if r0 < OH:
                _wide_task(xq[n], offs, idx, scale, bias, y[n], geo[3], kind, a0, a1, r0, min(OH, r0 + rows))


conv_table = Twin(_conv_table_body)


def pad_taps(offs: np.ndarray, zero_at: int) -> np.ndarray:
    """The taps' offsets padded to whole groups with taps that read the zero run at ``zero_at``."""
    k = offs.shape[0]
    out = np.full(-(-k // G) * G, zero_at, np.int64)
    out[:k] = offs
    return out


def table_offsets(signs: np.ndarray) -> np.ndarray:
    """signs (M, K) in {-1, +1} -> int32 idx[2 * ((mb * nq + q) * MR + r) + (0, 1)] = (where the
    entry starts, ((q % QC) * H + c) * P; the bits of the float +-1 it is added with), c the code
    (bits 1 for -1) of output channel mb * MR + r over group q's taps, or its complement times -1
    where the code is H or more; channels past M and taps past K count as +1."""
    m, k = signs.shape
    nq, nmb = -(-k // G), -(-m // MR)
    neg = np.zeros((nmb * MR, nq * G), np.int64)
    neg[:m, :k] = signs < 0
    codes = (neg.reshape(nmb * MR, nq, G) << np.arange(G)).sum(axis=2)  # (Mp, nq)
    flip = codes >= H
    off = (((np.arange(nq) % QC) * H)[None, :] + np.where(flip, E - 1 - codes, codes)) * P
    sign = np.where(flip, np.float32(-1), np.float32(1)).astype(np.float32).view(np.int32)
    pairs = np.stack([off.astype(np.int32), sign], axis=-1)  # (Mp, nq, 2)
    return np.ascontiguousarray(pairs.reshape(nmb, MR, nq, 2).transpose(0, 2, 1, 3)).reshape(-1)

