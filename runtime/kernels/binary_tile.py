"""The XOR-popcount register tile of the binary convolutions: MR output channels x LANES pixels.

For K input words per output (the taps of one output row, any layout with the pixels of a word
contiguous), the counts of MR output channels at LANES consecutive pixels are

    acc[r][j] = sum_k popcount(x[xb + offs[k] + j] ^ w[wb + k * MR + r])

kept in MR vector registers of LANES 64-bit lanes for the whole K loop: per word one vector load
of the pixels, MR weight words broadcast (packed channel-minor by ``tile_weights``), MR XORs,
popcounts and adds, and one store per register at the end. Nothing else is in the loop, so it
runs at the popcount unit's rate (``vpopcntq`` on AVX-512 VPOPCNTDQ; LLVM lowers the vector
``ctpop`` to a nibble-table ``pshufb`` popcount on AVX2 and to ``cnt`` on NEON). A plain loop
over pixels or channels keeps its counts in memory and reaches about a third of that rate:
benchmarks/bench_binary_conv_paths.py compares them.

LANES is the host's vector width in 64-bit words (8 on AVX-512, 4 on AVX2, 2 otherwise); MR = 8
channels leaves registers for the loaded pixels on every one of them. ``tile_row`` covers a row
of ``ow`` pixels: the last vector starts at ``ow - LANES`` and recomputes the few pixels
it shares with the one before, so nothing is read or written past the row.

Where the CPU has no 64-bit vector popcount (AVX2, NEON, AVX-512 without VPOPCNTDQ), LLVM
counts bytes (``pshufb`` nibble tables, ``cnt``) and then widens every word's eight byte counts
to 64 bits (``vpsadbw``, three ``uaddlp``) before the add. There the tile keeps byte counts
instead (``COUNT_BYTES``): per register a vector of byte counters, each word's ``ctpop`` over
bytes added in; a byte holds 8 bits x 31 words, so every run of up to ``BYTE_RUN`` = 31 words is
widened once into the 64-bit counts (one ``vpsadbw`` on AVX2, shifts and masks elsewhere).
benchmarks/bench_binary_tile.py compares the two on the host.

Ternary weights (``xnor_tile_masked``) carry their nonzero mask: each k's MR weight words are
followed by MR mask words, and the count is ``popcount((x ^ w) & m)`` (on AVX-512 the XOR and
AND are one ``vpternlogq``; about 0.8x the plain tile's rate here).
"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.bitpack import popcount


def _host_features() -> dict:
    try:
        return dict(ll.get_host_cpu_features())
    except Exception:  # an unknown host: LLVM splits what it must
        return {}


_FEATURES = _host_features()
LANES = 8 if _FEATURES.get("avx512f") else 4 if _FEATURES.get("avx2") else 2
COUNT_BYTES = not _FEATURES.get("avx512vpopcntdq")  # no 64-bit vector popcount: byte counters
PSADBW = LANES == 4  # AVX2 (no AVX-512F): widen byte counts with vpsadbw
BYTE_RUN = 31  # words a byte counter takes: 31 x 8 bits < 256
MR = 8
_i8, _i32, _i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_i64, LANES)
_VEC32 = ir.VectorType(_i32, LANES)
_BYTES = ir.VectorType(_i8, 8 * LANES)


def _splat(builder, scalar):
    undef = ir.Constant(_VEC, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _widen(builder, counts, psadbw: bool):
    """The byte counters ``counts`` (a _BYTES vector) summed per 64-bit lane: a _VEC (``psadbw``:
    with AVX2's ``vpsadbw``)."""
    if psadbw:
        psad = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_BYTES, _BYTES]), "llvm.x86.avx2.psad.bw")
        return builder.call(psad, [counts, ir.Constant(_BYTES, [0] * (8 * LANES))])
    v = builder.bitcast(counts, _VEC)
    for shift, mask in ((8, 0x00FF00FF00FF00FF), (16, 0x0000FFFF0000FFFF), (32, 0xFFFFFFFF)):
        m = ir.Constant(_VEC, [mask] * LANES)
        v = builder.add(builder.and_(v, m), builder.and_(builder.lshr(v, ir.Constant(_VEC, [shift] * LANES)), m))
    return v


def _tile_codegen(masked: bool, count_bytes: bool, psadbw: bool):
    """The body of ``xnor_tile`` (``masked``: ``xnor_tile_masked``); ``count_bytes``: byte
    counters widened every BYTE_RUN words (module docstring), with ``vpsadbw`` if ``psadbw``."""
    step = 2 * MR if masked else MR  # weight words per k: MR signs, then (masked) MR masks
    cvec = _BYTES if count_bytes else _VEC

    def codegen(context, builder, sig, args):
        x_, xb_, offs_, k0_, k1_, w_, wb_, acc_, ab_, as_ = args

        def data(i, v):
            return context.make_array(sig.args[i])(context, builder, v).data

        lanes = cvec.count
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(cvec, [cvec]), f"llvm.ctpop.v{lanes}i{cvec.element.width}")
        xp = builder.gep(data(0, x_), [xb_])
        op = data(2, offs_)
        wp = builder.gep(data(5, w_), [wb_])
        zero = ir.Constant(_VEC, [0] * LANES)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(MR)]
        counts = [cgutils.alloca_once_value(builder, ir.Constant(cvec, [0] * lanes)) for _ in range(MR)] if count_bytes else accs

        def words(k0, k1):  # counts[r] += popcount of words k0 .. k1 - 1
            with cgutils.for_range_slice(builder, k0, k1, ir.Constant(_i64, 1), inc=True) as (k, _):
                at = builder.gep(xp, [builder.load(builder.gep(op, [k]))])
                xv = builder.load(builder.bitcast(at, _VEC.as_pointer()), align=8)
                wk = builder.gep(wp, [builder.mul(k, ir.Constant(_i64, step))])
                for r in range(MR):
                    v = builder.xor(xv, _splat(builder, builder.load(builder.gep(wk, [ir.Constant(_i64, r)]))))
                    if masked:
                        v = builder.and_(v, _splat(builder, builder.load(builder.gep(wk, [ir.Constant(_i64, MR + r)]))))
                    builder.store(builder.add(builder.load(counts[r]), builder.call(ctpop, [builder.bitcast(v, cvec)])), counts[r])

        if count_bytes:  # runs of up to BYTE_RUN words, each widened into accs
            run = ir.Constant(_i64, BYTE_RUN)
            nruns = builder.sdiv(builder.add(builder.sub(k1_, k0_), ir.Constant(_i64, BYTE_RUN - 1)), run)
            with cgutils.for_range(builder, nruns) as loop:
                r0 = builder.add(k0_, builder.mul(loop.index, run))
                r1 = builder.add(r0, run)
                for r in range(MR):
                    builder.store(ir.Constant(cvec, [0] * lanes), counts[r])
                words(r0, builder.select(builder.icmp_signed("<", r1, k1_), r1, k1_))
                for r in range(MR):
                    builder.store(builder.add(builder.load(accs[r]), _widen(builder, builder.load(counts[r]), psadbw)), accs[r])
        else:
            words(k0_, k1_)
        ap = builder.gep(data(7, acc_), [ab_])
        width = sig.args[7].dtype.bitwidth  # int32 counts: half the stores and the output stage's loads
        for r in range(MR):
            dst = builder.gep(ap, [builder.mul(ir.Constant(_i64, r), as_)])
            v = builder.load(accs[r])
            if width == 32:
                v = builder.trunc(v, _VEC32)
            builder.store(v, builder.bitcast(dst, v.type.as_pointer()), align=width // 8)
        return context.get_dummy_value()

    return codegen


def make_xnor_tile(masked: bool, count_bytes: bool = COUNT_BYTES, psadbw: bool = PSADBW):
    """The tile as an intrinsic: ``xnor_tile`` or (``masked``) ``xnor_tile_masked``, counting in
    bytes (widened with ``vpsadbw`` or with shifts) or in 64-bit lanes; the host's way by
    default, tests take every way the host can run."""

    def xnor_tile(typingctx, x, xb, offs, k0, k1, w, wb, acc, ab, astride):
        return types.void(x, xb, offs, k0, k1, w, wb, acc, ab, astride), _tile_codegen(masked, count_bytes, psadbw)

    return intrinsic(xnor_tile)


xnor_tile = make_xnor_tile(False)
"""acc[ab + r * astride + j] = sum_{k0 <= k < k1} popcount(x[xb + offs[k] + j] ^ w[wb + k * MR + r])
for r < MR, j < LANES (x, w: uint64 arrays, offs int64, acc int64 or int32, all C-contiguous)."""
xnor_tile_masked = make_xnor_tile(True)
"""As ``xnor_tile`` with a weight mask after each k's MR weight words: acc[ab + r * astride + j]
= sum_k popcount((x[xb + offs[k] + j] ^ w[wb + 2 * k * MR + r]) & w[wb + (2 * k + 1) * MR + r])."""


@njit(cache=True)
def tile_row(x, xb, offs, k0, k1, w, wb, nblk, acc, ow, masked=False, col=0) -> None:
    """acc[c, col + p] (acc: int64 or int32 [>= nblk * MR, >= col + ow]) = sum_{k0 <= k < k1}
    popcount(x[xb + offs[k] + p] ^ w_k,c) for every channel c of ``nblk`` blocks (weights from
    w[wb] on, as ``tile_weights`` packs them) and pixel p < ow; x flat. With ``masked`` the
    weights carry a mask (``tile_weights(w, wm)``) and the count is popcount((x ^ w_k,c) & m_k,c).
    Rows shorter than a vector are counted word by word."""
    kk = offs.shape[0]
    a = acc.shape[1]
    step = 2 * MR if masked else MR
    if ow < LANES:
        for c in range(nblk * MR):
            wc = wb + (c // MR) * kk * step + c % MR
            for p in range(ow):
                s = 0
                for k in range(k0, k1):
                    v = x[xb + offs[k] + p] ^ w[wc + k * step]
                    if masked:
                        v &= w[wc + k * step + MR]
                    s += popcount(v)
                acc[c, col + p] = s
        return
    for cb in range(nblk):
        wcb = wb + cb * kk * step
        p = 0
        while p < ow:
            q = min(p, ow - LANES)
            if masked:
                xnor_tile_masked(x, xb + q, offs, k0, k1, w, wcb, acc, cb * MR * a + col + q, a)
            else:
                xnor_tile(x, xb + q, offs, k0, k1, w, wcb, acc, cb * MR * a + col + q, a)
            p += LANES


def tile_weights(w: np.ndarray, wm: np.ndarray | None = None) -> np.ndarray:
    """uint64 [G, K, C] weight words (word k of channel c) -> the tile's flat layout, channel
    blocks of MR (zero words pad the last): [G, ceil(C / MR), K, MR]; with a mask ``wm`` (same
    shape) each k's MR mask words follow its MR weight words: [G, ceil(C / MR), K, 2, MR]."""
    g, k, c = w.shape
    nblk = -(-c // MR)
    parts = (w,) if wm is None else (w, wm)
    pad = np.zeros((g, k, len(parts), nblk * MR), np.uint64)
    for i, part in enumerate(parts):
        pad[:, :, i, :c] = part
    return np.ascontiguousarray(pad.reshape(g, k, len(parts), nblk, MR).transpose(0, 3, 1, 2, 4)).reshape(-1)


@intrinsic
def prefetch_write(typingctx, a, i):
    """Prefetch the cache line of a[i] (a C-contiguous array) for writing: ``llvm.prefetch``
    with rw = 1, locality 3. A hint only: it changes no value."""

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        at = builder.bitcast(builder.gep(arr.data, [args[1]]), ir.IntType(8).as_pointer())
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [at.type, _i32, _i32, _i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [at, ir.Constant(_i32, 1), ir.Constant(_i32, 3), ir.Constant(_i32, 1)])
        return context.get_dummy_value()

    return types.void(a, i), codegen
