"""Pointwise conv columns for hosts of 8-float vectors and 16 registers (AVX2): the whole vectors
of positions of runtime/kernels/conv_pointwise.py on tiles of SR = 6 rows x 2 vectors.

A tile of PMR rows x one vector (8 rows on AVX2) keeps 8 multiply-add chains, exactly what two
pipes of 4-cycle latency need, and loads 9 values per 8 multiply-adds; 6 rows x 2 vectors keep 12
chains on 8 loads (12 accumulators, 2 loaded vectors and a broadcast of the 16 registers): the
columns of Bi-Real Net's 1x1 shortcuts went from 20 to 40-42 G multiply-adds/s.

Read in place, tap c of a tile is the run x[c * P + p : + 16]; on small planes (7x7, K = 256)
those runs, 196 bytes apart, miss L1 on every tap (31 G/s; 30-37 on 56x56 planes). So each
task first packs its image per tile of 16 positions, taps contiguous (``_pack_pair``):

    xp[(t * K + k) * 16 + j] = x[k * P + t * 16 + j]      (0 past the whole vectors)

a copy of x per call that the tiles then stream in order (42 G/s on the 7x7 plane, 40-42 on
56x56, the copy included).
The weights come in blocks of PB = 4 * SR = 24 rows (conv_tile.pack_weights), the tail tiles'
three vectors of channels; each tile reads SR of a block's rows (weight stride PB). A plane of an
odd number of vectors ends on a tile whose second vector is not stored (its end is the last whole
vector). A tail position left alone (P % 4 of them) gets a tile of its own, ``_lone_tile``, from
its column copied out (``_pack_lone``): a quarter of the multiply-adds of a tail tile pass.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.conv_tile import _VEC, LANES, _make_tile, _splat

SR = 6  # rows of a column tile
PB = 4 * SR  # rows of a weight block
NRP = 2 * LANES  # positions of a column tile
tile_pair = _make_tile(SR, 2, PB)
LR = 4  # rows of the lone-position tile


@njit(cache=True, nogil=True)
def pair_tiles(p: int) -> int:
    """Column tiles of a plane of p positions: its whole vectors, two at a time."""
    return -(-(p - p % LANES) // NRP)


@intrinsic
def _copy_run(typingctx, dst, at, src, frm):
    """dst[at:at + NRP] = src[frm:frm + NRP] as vectors: all loaded, then stored (a loop of
    scalars, which LLVM must assume may overlap, took 5x as long on a 28x28 plane)."""
    sig = types.void(dst, at, src, frm)

    def codegen(context, builder, sig, args):
        def at_(i, off):
            data = context.make_array(sig.args[i])(context, builder, args[i]).data
            return builder.gep(data, [off])

        src_, dst_ = at_(2, args[3]), at_(0, args[1])
        lanes = [ir.Constant(ir.IntType(64), v * LANES) for v in range(NRP // LANES)]
        vals = [builder.load(builder.bitcast(builder.gep(src_, [o]), _VEC.as_pointer()), align=4) for o in lanes]
        for o, val in zip(lanes, vals):
            builder.store(val, builder.bitcast(builder.gep(dst_, [o]), _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _pack_pair(xf, P, t, xp):
    """Tile t of one image into xp (module docstring)."""
    K = xf.shape[0] // P
    n = min(NRP, P - P % LANES - t * NRP)
    for k in range(K):
        src, at = k * P + t * NRP, (t * K + k) * NRP
        if n == NRP:
            _copy_run(xp, at, xf, src)
        else:
            for j in range(NRP):
                xp[at + j] = xf[src + j] if j < n else 0.0


@njit(cache=True, nogil=True)
def _pair_columns(xp, poffs, w, bias, yf, mb, M, P, relu):
    """Block mb's channels (PB rows, those below M) at the whole vectors of positions, from one
    image's packed tiles xp; poffs[k] = k * NRP."""
    K = poffs.shape[0]
    whole = P - P % LANES
    for r0 in range(0, PB, SR):
        m0 = mb * PB + r0
        if m0 >= M:
            break
        for t in range(-(-whole // NRP)):
            tile_pair(xp, t * K * NRP, t * NRP, poffs, w, mb * K * PB + r0, yf, m0 * P, P, 0, t * NRP, P, P, P,
                      whole, bias, m0, min(SR, M - m0), relu)


@intrinsic
def _lone_tile(typingctx, w, bw, x, out):
    """out[:PB] = sum_k w[bw + k * PB : + PB] * x[k] over the K = len(x) taps, PB
    channels in PB / LANES vectors: tap k on row k % LR, the last K % LR on row 0, the rows added
    at the end (LR * PB / LANES independent chains, one multiply-add per product)."""
    sig = types.void(w, bw, x, out)

    def codegen(context, builder, sig, args):
        def data(i):
            return context.make_array(sig.args[i])(context, builder, args[i])

        i64 = ir.IntType(64)
        wd, xa = builder.gep(data(0).data, [args[1]]), data(2)
        xd, nk = xa.data, xa.nitems
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                                             f"llvm.fmuladd.v{LANES}f32")
        nv = PB // LANES
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(_VEC, [0.0] * LANES)) for _ in range(nv)]
                for _ in range(LR)]

        def tap(k, row):
            xv = _splat(builder, builder.load(builder.gep(xd, [k])))
            wk = builder.gep(wd, [builder.mul(k, ir.Constant(i64, PB))])
            for v in range(nv):
                wv = builder.load(builder.bitcast(builder.gep(wk, [ir.Constant(i64, v * LANES)]), _VEC.as_pointer()),
                                  align=4)
                builder.store(builder.call(fma, [wv, xv, builder.load(row[v])]), row[v])

        nq = builder.sdiv(nk, ir.Constant(i64, LR))
        with cgutils.for_range(builder, nq) as loop:
            for r in range(LR):
                tap(builder.add(builder.mul(loop.index, ir.Constant(i64, LR)), ir.Constant(i64, r)), accs[r])
        with cgutils.for_range_slice(builder, builder.mul(nq, ir.Constant(i64, LR)), nk, ir.Constant(i64, 1)) as (k, _):
            tap(k, accs[0])
        od = data(3).data
        for v in range(nv):
            total = builder.load(accs[0][v])
            for r in range(1, LR):
                total = builder.fadd(total, builder.load(accs[r][v]))
            builder.store(total, builder.bitcast(builder.gep(od, [ir.Constant(i64, v * LANES)]), _VEC.as_pointer()),
                          align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _pack_lone(xf, P, first, xl):
    """The columns of positions first <= p < P of one image's planes xf, each contiguous:
    xl[(p - first) * K + k] = x[k, p] (read in place, 196 bytes apart on a 7x7 plane, a lone
    position's taps took twice as long)."""
    K = xf.shape[0] // P
    for p in range(first, P):
        for k in range(K):
            xl[(p - first) * K + k] = xf[k * P + p]


@njit(cache=True, nogil=True)
def _lone_positions(w, bias, xl, tmp, yf, mb, M, P, K, first, relu):
    """Block mb's channels (those below M) at positions first <= p < P, one at a time
    (``_lone_tile``), from their columns xl (``_pack_lone``), with the bias and a Relu."""
    for p in range(first, P):
        _lone_tile(w, mb * K * PB, xl[(p - first) * K:(p - first + 1) * K], tmp)
        for c in range(min(PB, M - mb * PB)):
            v = tmp[c] + bias[mb * PB + c]
            if relu and not v > 0.0:  # as the tiles' Relu: 0 for NaN too
                v = 0.0
            yf[(mb * PB + c) * P + p] = v
