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
select: ``acc[m] += T[q, code[m, q]]``, one vector load and add for G multiply-adds. The tables
are built in registers, half by one subtraction each (Gray order: T[c] = T[c - 2^j] - 2 x_j, j
the lowest bit of c) and half by negation (T[~c] = -T[c]), and cost 2^G vector stores per group,
shared by all output channels. The taps past K (K rounded up to a multiple of G) read a zero
run at the end of xq. A tile (``accumulate``) holds MR output channels x V vectors of positions
in registers over a chunk of QC groups, whose tables (QC * 2^G * P floats) stay in L1; between
chunks it keeps them in a small buffer. Then ``y = act(acc * scale + bias)`` is written into the
block's output rows (Relu there, other activations over the rows afterwards).

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

from runtime.codegen import Expr
from runtime.kernels import conv_tile as tiles
from runtime.kernels.base import Twin
from runtime.kernels.conv_gemm import workers
from runtime.kernels.conv_planes import copy_rows, split_input
from runtime.kernels.conv_tile import LANES, _isplat, _next_start_jit, _splat, _splat_bool
from runtime.kernels.nn import act_inplace
from runtime.threads import current_threads

G = 4  # taps per group: tables of 2^G vectors
E = 1 << G
MR, V = {16: (8, 2), 8: (4, 3)}.get(LANES, (8, 3))  # output channels x position vectors per tile
P = V * LANES  # positions per block
RS = P + 8  # floats between panel rows: a block plus the spill of an 8-float copy (conv_panel.py)
QC = max(1, (16 << 10) // (E * P * 4))  # groups per chunk: its tables fill 16 KB of L1
# the cost of a vector add from a table, of a table entry, of 8 floats packed, of an output vector
# stored, in float vector multiply-adds (``_ops``)
ACC_COST, BUILD_COST, PACK_COST, STORE_COST = 1.45, 1.55, 2.65, 30.0
SPLIT_WORK = 1 << 22  # below this much float-equivalent work a conv runs in one thread (conv.py)
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
            tq = builder.gep(tb, [builder.mul(q, _c(E * P))])
            for v in range(V):
                xs = [builder.load(_vptr(builder, t, _c(v * LANES)), align=4) for t in taps]
                twice = [builder.fadd(a, a) for a in xs]
                t = {0: xs[0]}
                for j in range(1, G):
                    t[0] = builder.fadd(t[0], xs[j])
                for code in range(1, E // 2):  # the top bit clear; the rest by negation
                    low = (code & -code).bit_length() - 1
                    t[code] = builder.fsub(t[code ^ (1 << low)], twice[low])
                for code in range(E // 2):
                    t[E - 1 - code] = builder.fneg(t[code])
                for code in range(E):
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
        tb = context.make_array(sig.args[0])(context, builder, tab_).data
        ib = builder.gep(context.make_array(sig.args[1])(context, builder, idx_).data, [ipos_])
        ab = builder.gep(context.make_array(sig.args[4])(context, builder, acc_).data, [apos_])
        zero = ir.Constant(_VEC, [0.0] * LANES)
        fresh = builder.icmp_signed("!=", first_, ir.Constant(first_.type, 0))
        ptrs = [[_vptr(builder, ab, _c(r * P + v * LANES)) for v in range(V)] for r in range(MR)]
        accs = [[cgutils.alloca_once_value(builder, builder.select(fresh, zero, builder.load(p, align=4)))
                 for p in row] for row in ptrs]
        with cgutils.for_range(builder, nq_) as loop:
            qb = builder.gep(ib, [builder.mul(loop.index, _c(MR))])
            for r in range(MR):
                tp = builder.gep(tb, [builder.sext(builder.load(builder.gep(qb, [_c(r)])), _i64)])
                for v in range(V):
                    val = builder.load(_vptr(builder, tp, _c(v * LANES)), align=4)
                    builder.store(builder.fadd(builder.load(accs[r][v]), val), accs[r][v])
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
    + oh * OW + ow < Q, j < P, one run of output columns at a time (conv_panel.py)."""
    j = 0
    while j < P and q0 + j < Q:
        q = q0 + j
        n = q // PP
        p = q - n * PP
        oh = p // OW
        ow = p - oh * OW
        run = min(OW - ow, P - j)
        copy_rows(pan, j, RS, xq[n], oh * Wq + ow, offs, run)
        j += run


@njit(cache=True, nogil=True)
def _block(src, xpos, koffs, idx, tab, acc, nq, nmb):
    """acc = the sums of one block of P positions read at src[xpos + koffs[k] + j] (module
    docstring), chunk by chunk of QC groups."""
    for q0 in range(0, nq, QC):
        nqc = min(QC, nq - q0)
        build_tables(src, xpos, koffs, q0 * G, nqc, tab)
        for mb in range(nmb):
            accumulate(tab, idx, (mb * nq + q0) * MR, nqc, acc, mb * MR * P, q0 == 0)


def _conv_table_body(x, xq, offs, idx, scale, bias, y, geo, kind, a0, a1, tasks, packed):
    """y (N, M, OH, OW) = act(conv(x) * scale + bias) by sign tables (module docstring); xq (N,
    planes + zero run) the phase-split images (conv_tile.geometry; padding and the zero run never
    written), offs the taps' offsets (padded to whole groups with the zero run's), idx the tiles'
    table offsets (``table_offsets``). ``packed``: blocks of the batch's positions through a panel
    (``_pack``), ``tasks`` runs of blocks; else blocks of each image's wide rows, ``tasks`` runs of
    rows per image."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Wq, PP = geo[3], OH * OW
    nq = offs.shape[0] // G
    nmb = idx.shape[0] // (nq * MR)
    for nc in prange(N * C):
        split_input(x, xq, nc, geo)
    yf = y.reshape(N, M, PP)
    if packed:
        Q = N * PP
        blocks = -(-Q // P)
        per = -(-blocks // tasks) * P  # positions per task
        for t in prange(tasks):
            pan = np.empty(offs.shape[0] * RS, np.float32)
            tab = np.empty(QC * E * P, np.float32)
            acc = np.empty(nmb * MR * P + LANES, np.float32)
            koffs = np.arange(offs.shape[0]) * RS
            q_lo, q_hi = min(Q, t * per), min(Q, (t + 1) * per)
            for q0 in range(q_lo, q_hi, P):
                _pack(xq, pan, offs, q0, PP, OW, Wq, Q)
                _block(pan, 0, koffs, idx, tab, acc, nq, nmb)
                _store_packed(acc, yf, q0, min(q0 + P, q_hi), scale, bias, kind == 1)
            if kind > 1:
                for n in range(q_lo // PP, -(-q_hi // PP)):
                    lo, hi = max(q_lo - n * PP, 0), min(q_hi - n * PP, PP)
                    for m in range(M):
                        act_inplace(yf[n, m, lo:hi], kind, a0, a1)
    rows = -(-OH // tasks)
    for task in prange(0 if packed else N * tasks):
        n = task // tasks
        r0 = (task - n * tasks) * rows
        r1 = min(OH, r0 + rows)
        if r1 <= r0:
            continue
        tab = np.empty(QC * E * P, np.float32)
        acc = np.empty(nmb * MR * P + LANES, np.float32)
        end = (r1 - 1) * Wq + OW
        pos, oh, ow = r0 * Wq, r0, 0
        while pos < end:
            _block(xq[n], pos, offs, idx, tab, acc, nq, nmb)
            _store_wide(acc, y[n], pos, min(pos + P, end), Wq, scale, bias, kind == 1)
            pos, oh, ow = _next_start_jit(pos, oh, ow, Wq, OW, P)
        if kind > 1:
            for m in range(M):
                act_inplace(yf[n, m, r0 * OW:r1 * OW], kind, a0, a1)


conv_table = Twin(_conv_table_body)


def pad_taps(offs: np.ndarray, zero_at: int) -> np.ndarray:
    """The taps' offsets padded to whole groups with taps that read the zero run at ``zero_at``."""
    k = offs.shape[0]
    out = np.full(-(-k // G) * G, zero_at, np.int64)
    out[:k] = offs
    return out


def table_offsets(signs: np.ndarray) -> np.ndarray:
    """signs (M, K) in {-1, +1} -> int32 idx[(mb * nq + q) * MR + r] = ((q % QC) * E + code) * P,
    code the bits (1 for -1) of output channel mb * MR + r over group q's taps; channels past M
    and taps past K count as +1."""
    m, k = signs.shape
    nq, nmb = -(-k // G), -(-m // MR)
    neg = np.zeros((nmb * MR, nq * G), np.int64)
    neg[:m, :k] = signs < 0
    codes = (neg.reshape(nmb * MR, nq, G) << np.arange(G)).sum(axis=2)  # (Mp, nq)
    off = ((np.arange(nq) % QC) * E)[None, :] + codes
    return np.ascontiguousarray((off * P).reshape(nmb, MR, nq).transpose(0, 2, 1)).reshape(-1).astype(np.int32)


class TablePlan:
    """One binary-weight convolution (one group, weights all +-1) by sign tables: its geometry,
    constants and the choice of wide rows or packed blocks."""

    def __init__(self, conv, signs: np.ndarray, scale: np.ndarray, bias: np.ndarray, packed: bool):
        self.x4, self.y4, self.macs, self.packed = conv.x4, conv.y4, conv.macs, packed
        m, c, kh, kw = conv.w4
        offs, self.geo, plane = tiles.geometry(c, self.y4[2:], (kh, kw), conv.strides, conv.dil, conv.pads)
        wide = self.geo[2] * self.geo[3]
        self.xq_shape = (self.x4[0], plane + wide + 2 * P)  # the zero run: padding taps, block overrun
        self.offs = pad_taps(offs, plane)
        self.idx = table_offsets(signs.reshape(m, -1))
        self.scale, self.bias = np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(bias, np.float32)
        self.work = int(_ops(self.y4, m, c * kh * kw, self.geo[3], packed) * LANES)  # in multiply-adds

    @staticmethod
    def choose(conv, values: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> TablePlan | None:
        """The table plan of least estimated cost (``_ops``), when it is less than the float
        convolution's (a vector multiply-add per LANES multiply-adds), else None: other groups,
        ternary weights and other dtypes stay float."""
        if conv.groups != 1 or conv.dtype != np.float32 or not np.all(values):
            return None
        m, c, kh, kw = conv.w4
        wq = tiles.geometry(1, conv.y4[2:], (kh, kw), conv.strides, conv.dil, conv.pads)[1][3]
        costs = {packed: _ops(conv.y4, m, c * kh * kw, wq, packed) for packed in (False, True)}
        packed = min(costs, key=costs.get)
        if costs[packed] >= conv.macs / LANES:
            return None
        return TablePlan(conv, values, scale, bias, packed)

    def _tasks(self, threads: int) -> int:
        t = workers(self.work, threads, SPLIT_WORK)
        n, _, oh, ow = self.y4
        if self.packed:
            return max(1, min(t, -(-n * oh * ow // P)))
        return tiles.chunks_of(n, oh, t)

    def emit(self, e, x: str, y: str, act) -> None:
        tasks = self._tasks(e.threads)
        xq = e.work(self.xq_shape, np.float32, "xq", zeroed=True)
        x, y = Expr(f"{x}.reshape({e.lit(self.x4)})"), Expr(f"{y}.reshape({e.lit(self.y4)})")
        work = self.work if workers(self.work, e.threads, SPLIT_WORK) > 1 else 0
        e.call(conv_table, x, xq, self.offs, self.idx, self.scale, self.bias, y, self.geo, *act, tasks, self.packed,
               work=work)

    def make_scratch(self) -> dict:
        return {"xq": np.zeros(self.xq_shape, np.float32)}

    def run(self, x: np.ndarray, y: np.ndarray, act, scratch: dict) -> None:
        threads = current_threads()
        work = self.work if workers(self.work, threads, SPLIT_WORK) > 1 else 0
        conv_table(work, x.reshape(self.x4), scratch["xq"], self.offs, self.idx, self.scale, self.bias,
                   y.reshape(self.y4), self.geo, *act, self._tasks(threads), self.packed)


def _ops(y4, m: int, k: int, wq: int, packed: bool) -> float:
    """Estimated cost of the table path in float vector multiply-adds (the float convolution's
    unit, LANES multiply-adds each): per block of P positions and group, MR * V loads and adds
    per tile of output channels and 2^G * V table stores; per block, its K taps' P values packed
    (packed blocks; wide blocks cover the wide columns instead) and M * V output vectors stored.
    The weights are fitted to benchmarks/bench_binary_weight.py (AVX-512, Zen 4)."""
    n, _, oh, ow = y4
    nq, mp = -(-k // G), -(-m // MR) * MR
    if packed:
        blocks, pack = -(-n * oh * ow // P), k * P / 8
    else:
        blocks, pack = n * -(-((oh - 1) * wq + ow) // P), 0.0
    return blocks * (nq * V * (ACC_COST * mp + BUILD_COST * E) + PACK_COST * pack + STORE_COST * m * V)
