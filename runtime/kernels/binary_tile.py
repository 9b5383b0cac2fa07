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


def _host_lanes() -> int:
    try:
        features = ll.get_host_cpu_features()
    except Exception:  # an unknown host: LLVM splits what it must
        features = {}
    if features.get("avx512f"):
        return 8
    if features.get("avx2"):
        return 4
    return 2


LANES = _host_lanes()
MR = 8
_i32, _i64 = ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_i64, LANES)
_VEC32 = ir.VectorType(_i32, LANES)


def _splat(builder, scalar):
    undef = ir.Constant(_VEC, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _tile_codegen(masked: bool):
    """The body of ``xnor_tile`` (``masked``: ``xnor_tile_masked``)."""
    step = 2 * MR if masked else MR  # weight words per k: MR signs, then (masked) MR masks

    def codegen(context, builder, sig, args):
        x_, xb_, offs_, k0_, k1_, w_, wb_, acc_, ab_, as_ = args

        def data(i, v):
            return context.make_array(sig.args[i])(context, builder, v).data

        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC]), f"llvm.ctpop.v{LANES}i64")
        xp = builder.gep(data(0, x_), [xb_])
        op = data(2, offs_)
        wp = builder.gep(data(5, w_), [wb_])
        zero = ir.Constant(_VEC, [0] * LANES)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(MR)]
        with cgutils.for_range_slice(builder, k0_, k1_, ir.Constant(_i64, 1), inc=True) as (k, _):
            at = builder.gep(xp, [builder.load(builder.gep(op, [k]))])
            xv = builder.load(builder.bitcast(at, _VEC.as_pointer()), align=8)
            wk = builder.gep(wp, [builder.mul(k, ir.Constant(_i64, step))])
            for r in range(MR):
                v = builder.xor(xv, _splat(builder, builder.load(builder.gep(wk, [ir.Constant(_i64, r)]))))
                if masked:
                    v = builder.and_(v, _splat(builder, builder.load(builder.gep(wk, [ir.Constant(_i64, MR + r)]))))
                builder.store(builder.add(builder.load(accs[r]), builder.call(ctpop, [v])), accs[r])
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


@intrinsic
def xnor_tile(typingctx, x, xb, offs, k0, k1, w, wb, acc, ab, astride):
    """acc[ab + r * astride + j] = sum_{k0 <= k < k1} popcount(x[xb + offs[k] + j] ^ w[wb + k * MR + r])
    for r < MR, j < LANES (x, w: uint64 arrays, offs int64, acc int64 or int32, all C-contiguous)."""
    return types.void(x, xb, offs, k0, k1, w, wb, acc, ab, astride), _tile_codegen(False)


@intrinsic
def xnor_tile_masked(typingctx, x, xb, offs, k0, k1, w, wb, acc, ab, astride):
    """As ``xnor_tile`` with a weight mask after each k's MR weight words: acc[ab + r * astride + j]
    = sum_k popcount((x[xb + offs[k] + j] ^ w[wb + 2 * k * MR + r]) & w[wb + (2 * k + 1) * MR + r])."""
    return types.void(x, xb, offs, k0, k1, w, wb, acc, ab, astride), _tile_codegen(True)


@njit(cache=True)
def tile_row(x, xb, offs, k0, k1, w, wb, nblk, acc, ow, masked=False) -> None:
    """acc[c, p] (acc: int64 or int32 [>= nblk * MR, >= ow]) = sum_{k0 <= k < k1} popcount(x[xb +
    offs[k] + p] ^ w_k,c) for every channel c of ``nblk`` blocks (weights from w[wb] on, as
    ``tile_weights`` packs them) and pixel p < ow; x flat. With ``masked`` the weights carry a
    mask (``tile_weights(w, wm)``) and the count is popcount((x ^ w_k,c) & m_k,c). Rows shorter
    than a vector are counted word by word."""
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
                acc[c, p] = s
        return
    for cb in range(nblk):
        wcb = wb + cb * kk * step
        p = 0
        while p < ow:
            q = min(p, ow - LANES)
            if masked:
                xnor_tile_masked(x, xb + q, offs, k0, k1, w, wcb, acc, cb * MR * a + q, a)
            else:
                xnor_tile(x, xb + q, offs, k0, k1, w, wcb, acc, cb * MR * a + q, a)
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
