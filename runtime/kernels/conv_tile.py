"""Float convolution as register tiles: the direct convolution of one group, no patch matrix.

Geometry (as in runtime/kernels/conv.py): the zero-padded input split into stride phases, xq,
and the output computed on "wide" rows of Wq = OW + (KW-1)*dw // sw columns, flattened: output
position i = oh * Wq + ow reads tap k = (c, ki, kj) at xq[offs[k] + i], offs[k] the flat offset
of channel c's phase plane ((ki*dh) % sh, (kj*dw) % sw) plus ((ki*dh) // sh) * Wq + (kj*dw) // sw.
So for a run of consecutive positions every tap is one contiguous load, whatever the stride:

    y[m, i] = act(bias[m] + sum_k w[m, k] * xq[offs[k] + i])

``tile`` computes one MR x NR block of that sum (MR output channels, NR = V * LANES consecutive
positions) in MR * V vector registers of LANES floats: per tap it loads V vectors of xq and
broadcasts MR weights (packed tap-major, ``pack_weights``), MR * V fused multiply-adds. The
bias and a Relu are applied in the registers and the block is stored straight into y (NCHW):
a vector inside one output row is one store; one that reaches the wide columns that do not
exist in y (ow >= OW) is one store too when its wide lanes fall on the start of the next output
row and a later vector of the same task stores that row (they are overwritten then); else, and
for a vector that crosses a row end, it is stored lane by lane, skipping those. LANES, MR and
V fit the vector registers of the host (``TILE``): 16 floats x 8 x 2 on AVX-512 (16 of its 32
registers accumulate), 8 x 4 x 3 on AVX2, 4 x 8 x 3 on NEON.

Tiles start at NR-position steps, except that one which would start on wide columns starts at
the next row instead (so rows of a whole number of tiles waste nothing); the wide columns a tile
covers, and the end of the last tile of a task, are computed for nothing: ``waste`` measures
that, and conv.py takes this path only where it is small (large planes: stems, first layers,
3x3 convs). It beats im2col + BLAS there because nothing but y is written and no second pass
adds the bias. A 1x1 kernel reads one stride phase only, so its planes are the input sampled at
the stride (``geometry``). Dense products with constant weights use the same tile with the
roles turned around (runtime/kernels/dense_tiles.py).
"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.base import Twin
from runtime.kernels.conv_planes import split_input
from runtime.kernels.nn import act_inplace


def _host_tile() -> tuple[int, int, int]:
    """(LANES, MR, V) for this CPU: the vector width in floats and a register block that leaves
    room for V loaded vectors and a broadcast weight."""
    try:
        features = ll.get_host_cpu_features()
    except Exception:  # an unknown host: LLVM splits the 4-float vectors as it must
        features = {}
    if features.get("avx512f"):
        return 16, 8, 2
    if features.get("avx2") or features.get("avx"):
        return 8, 4, 3
    return 4, 8, 3


TILE = _host_tile()
LANES, MR, V = TILE
NR = V * LANES  # positions per tile
_i1, _i32, _i64, _f32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
_VEC = ir.VectorType(_f32, LANES)
_IVEC = ir.VectorType(_i64, LANES)
_MASK = ir.VectorType(_i1, LANES)


def _splat(builder, scalar):
    undef = ir.Constant(_VEC, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _accumulate(builder, fma, xb, offs, nk, wb, mr, nv, ws):
    """The K loop: acc[r][v] += w[k*ws + r] * xq[offs[k] + v*LANES : + LANES] (r < mr, v < nv);
    returns the accumulators (allocas that LLVM keeps in registers)."""
    zero = ir.Constant(_VEC, [0.0] * LANES)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(mr)]
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        xk = builder.gep(xb, [builder.load(builder.gep(offs, [k]))])
        xs = [builder.load(builder.bitcast(builder.gep(xk, [ir.Constant(_i64, v * LANES)]), _VEC.as_pointer()),
                           align=4) for v in range(nv)]
        wk = builder.gep(wb, [builder.mul(k, ir.Constant(_i64, ws))])
        for r in range(mr):
            wv = _splat(builder, builder.load(builder.gep(wk, [ir.Constant(_i64, r)])))
            for v in range(nv):
                builder.store(builder.call(fma, [xs[v], wv, builder.load(accs[r][v])]), accs[r][v])
    return accs


def _finish(builder, accs, bias, relu):
    """acc + bias, then max(., 0) where relu (0 for NaN too, as the other kernels do)."""
    zero = ir.Constant(_VEC, [0.0] * LANES)
    relu_on = builder.icmp_signed("!=", relu, ir.Constant(relu.type, 0))
    out = []
    for r in range(len(accs)):
        b = _splat(builder, builder.load(builder.gep(bias, [ir.Constant(_i64, r)])))
        row = []
        for v in range(len(accs[r])):
            val = builder.fadd(builder.load(accs[r][v]), b)
            keep = builder.or_(builder.fcmp_ordered(">", val, zero), builder.not_(_splat_bool(builder, relu_on)))
            row.append(builder.select(keep, val, zero))
        out.append(row)
    return out


def _splat_bool(builder, flag):
    vt = ir.VectorType(_i1, LANES)
    undef = ir.Constant(vt, ir.Undefined)
    one = builder.insert_element(undef, flag, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _wrap(builder, ohv, owv, wq):
    """while ow >= Wq: ow -= Wq; oh += 1 (a vector may span several short rows)."""
    cond = builder.append_basic_block("wrap.cond")
    body = builder.append_basic_block("wrap.body")
    end = builder.append_basic_block("wrap.end")
    builder.branch(cond)
    builder.position_at_end(cond)
    builder.cbranch(builder.icmp_signed(">=", builder.load(owv), wq), body, end)
    builder.position_at_end(body)
    builder.store(builder.sub(builder.load(owv), wq), owv)
    builder.store(builder.add(builder.load(ohv), ir.Constant(_i64, 1)), ohv)
    builder.branch(cond)
    builder.position_at_end(end)


def _store(builder, vals, yb, ystride, mvalid, pos, oh0, ow0, geo):
    """Store vector v of row r at output position pos + v*LANES (oh0, ow0 its row and column)
    into y at yb + r * ystride + oh * rs + ow, for r < mvalid; positions past ``end`` or in the
    wide columns are skipped. A vector that is not one store is stored one row piece at a time,
    each a masked vector store (``_store_pieces``; stored lane by lane, unrolled, the MR x V x
    LANES conditional stores of the two tile variants took most of their compile time)."""
    wq, ow_n, rs, end = geo
    ohv, owv = cgutils.alloca_once_value(builder, oh0), cgutils.alloca_once_value(builder, ow0)
    # rows without wide columns, stored back to back: a vector across a row end is one store too
    flat = builder.and_(builder.icmp_signed("==", wq, ow_n), builder.icmp_signed("==", rs, ow_n))
    # rows stored back to back (rs == ow_n) of at least LANES outputs: a vector that ends in the
    # wide columns may be stored whole, its wide lanes landing on the next row's first columns,
    # which a later vector of this call or a later call overwrites, when that row is one this
    # task computes (end lies past its start); masked stores cost several plain ones
    spill_ok = builder.and_(builder.icmp_signed("==", rs, ow_n),
                            builder.icmp_signed(">=", ow_n, ir.Constant(_i64, LANES)))
    lanes_c = ir.Constant(_i64, LANES)
    for v in range(len(vals[0])):
        if v:
            builder.store(builder.add(builder.load(owv), lanes_c), owv)
            _wrap(builder, ohv, owv, wq)
        oh, ow = builder.load(ohv), builder.load(owv)
        p = builder.add(pos, ir.Constant(_i64, v * LANES))
        in_row = builder.or_(builder.icmp_signed("<=", builder.add(ow, lanes_c), ow_n), flat)
        fits = builder.and_(in_row, builder.icmp_signed("<=", builder.add(p, lanes_c), end))
        next_row = builder.mul(builder.add(oh, ir.Constant(_i64, 1)), wq)
        spill = builder.and_(builder.and_(spill_ok, builder.icmp_signed("<=", builder.add(ow, lanes_c), wq)),
                             builder.icmp_signed("<", next_row, end))
        fits = builder.or_(fits, spill)
        with builder.if_else(fits, likely=True) as (whole, lanes):
            with whole:
                at = builder.add(builder.mul(oh, rs), ow)
                _store_rows(builder, [vals[r][v] for r in range(len(vals))], yb, ystride, mvalid, at, None)
            with lanes:
                _store_pieces(builder, [vals[r][v] for r in range(len(vals))], yb, ystride, mvalid, p, oh, ow, geo)


def _store_rows(builder, vecs, yb, ystride, mvalid, at, mask):
    """vecs[r] at yb + r * ystride + at for r < mvalid: whole, or its lanes where ``mask``."""
    store = None
    if mask is not None:
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VEC, _VEC.as_pointer(), _i32, _MASK]),
            f"llvm.masked.store.v{LANES}f32.p0v{LANES}f32")
    for r, vec in enumerate(vecs):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), mvalid), likely=True):
            row = builder.gep(yb, [builder.add(builder.mul(ir.Constant(_i64, r), ystride), at)])
            ptr = builder.bitcast(row, _VEC.as_pointer())
            if mask is None:
                builder.store(vec, ptr, align=4)
            else:
                builder.call(store, [vec, ptr, ir.Constant(_i32, 4), mask])


def _store_pieces(builder, vecs, yb, ystride, mvalid, p, oh, ow, geo):
    """The lanes of vecs (positions p + j, the first at row oh, column ow) one row at a time: the
    piece of lanes j0 <= j < j0 + wq - c0 lies in row o from column c0 on, so lane j goes to
    o * rs + c0 - j0 + j, stored where its column is below ow_n and p + j < end."""
    wq, ow_n, rs, end = geo
    j0v = cgutils.alloca_once_value(builder, ir.Constant(_i64, 0))
    ov, cv = cgutils.alloca_once_value(builder, oh), cgutils.alloca_once_value(builder, ow)
    lane = ir.Constant(_IVEC, list(range(LANES)))
    with cgutils.for_range(builder, ir.Constant(_i64, LANES)):  # at most LANES pieces
        j0 = builder.load(j0v)
        with builder.if_then(builder.icmp_signed("<", j0, ir.Constant(_i64, LANES))):
            o, c0 = builder.load(ov), builder.load(cv)
            shift = builder.sub(c0, j0)  # lane j's column is j + shift
            col = builder.add(lane, _isplat(builder, shift))
            mask = builder.and_(builder.and_(builder.icmp_signed(">=", lane, _isplat(builder, j0)),
                                             builder.icmp_signed("<", col, _isplat(builder, ow_n))),
                                builder.icmp_signed("<", builder.add(lane, _isplat(builder, p)), _isplat(builder, end)))
            _store_rows(builder, vecs, yb, ystride, mvalid, builder.add(builder.mul(o, rs), shift), mask)
            builder.store(builder.add(j0, builder.sub(wq, c0)), j0v)
            builder.store(ir.Constant(_i64, 0), cv)
            builder.store(builder.add(o, ir.Constant(_i64, 1)), ov)


def _isplat(builder, scalar):
    undef = ir.Constant(_IVEC, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _make_tile(mr: int, nv: int, ws: int | None = None):
    """The tile intrinsic of mr weight rows x nv vectors of positions; ws: the weights' stride per
    tap (mr unless the tile reads rows r0 .. r0 + mr of blocks of ws rows)."""
    ws = mr if ws is None else ws

    def tile(typingctx, xq, xpos, pos, offs, w, bw, y, by, ystride, oh0, ow0, wq, ow_n, rs, end, bias, bm, mvalid,
             relu):
        sig = types.void(xq, xpos, pos, offs, w, bw, y, by, ystride, oh0, ow0, wq, ow_n, rs, end, bias, bm, mvalid,
                         relu)

        def codegen(context, builder, sig, args):
            aty = sig.args
            xq_, xpos_, pos_, offs_, w_, bw_, y_, by_, ystride_, oh0_, ow0_, wq_, own_, rs_, end_, bias_, bm_, mvalid_, relu_ = args

            def data(i, v):
                return context.make_array(aty[i])(context, builder, v).data

            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                                                 f"llvm.fmuladd.v{LANES}f32")
            nk = context.make_array(aty[3])(context, builder, offs_).nitems
            xb = builder.gep(data(0, xq_), [xpos_])
            accs = _accumulate(builder, fma, xb, data(3, offs_), nk, builder.gep(data(4, w_), [bw_]), mr, nv, ws)
            vals = _finish(builder, accs, builder.gep(data(15, bias_), [bm_]), relu_)
            yb = builder.gep(data(6, y_), [by_])
            _store(builder, vals, yb, ystride_, mvalid_, pos_, oh0_, ow0_, (wq_, own_, rs_, end_))
            return context.get_dummy_value()

        return sig, codegen

    tile.__doc__ = f"""One {mr} x {nv * LANES} tile (module docstring): output channels m0 + r (r < mvalid) at
    positions pos + j (pos + j < end), read from xq[xpos + offs[k] + j], stored at (oh, ow) (from
    oh0, ow0 on; rows of wq positions, the first ow_n of them stored) into
    y[by + r * ystride + oh * rs + ow]; weights w[bw + k*{ws} + r], bias bias[bm + r]."""
    return intrinsic(tile)


tile = _make_tile(MR, V)
# half the channels, twice the positions: the same registers for channel counts that whole
# blocks of MR would pad much (conv_tiles.TilePlan.choose)
MR_SHORT, V_SHORT = MR // 2, 2 * V
NR_SHORT = V_SHORT * LANES
tile_short = _make_tile(MR_SHORT, V_SHORT)


def _next_start(pos, oh, ow, wq, ow_n, nr):
    """The position (row, column) of the next tile of nr positions after the one at pos: nr on,
    or the start of the next row when that lands in the wide columns (a tile never starts on
    nothing to store)."""
    pos, ow = pos + nr, ow + nr
    while ow >= wq:
        ow -= wq
        oh += 1
    if ow >= ow_n:
        pos, oh, ow = pos + wq - ow, oh + 1, 0
    return pos, oh, ow


_next_start_jit = njit(cache=True, nogil=True)(_next_start)


def _conv_tile_body(x, xq, w, bias, y, offs, geo, kind, a0, a1, chunks, short):
    """y (N, M, OH, OW) = act(conv(x (N, C, H, W)) + bias) through tiles; xq (N, >= C*sh*sw*Hq*Wq
    + NR_SHORT) the phase-split images (their padding zero, never written), w and bias packed by
    ``pack_weights``, offs the taps' offsets; each image's output rows are cut into ``chunks``
    runs of rows, one task each. ``short``: the tiles of MR_SHORT channels (``tile_short``), for
    channel counts that whole blocks of MR would pad much."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Wq = geo[3]
    mr, nr = (MR_SHORT, NR_SHORT) if short else (MR, NR)
    nmb, K = -(-M // mr), offs.shape[0]
    for nc in prange(N * C):
        split_input(x, xq, nc, geo)
    rows = -(-OH // chunks)
    for task in prange(N * chunks):
        n = task // chunks
        r0 = (task - n * chunks) * rows
        r1 = min(OH, r0 + rows)
        if r1 <= r0:
            continue
        xf, yf = xq[n], y[n].reshape(M * OH * OW)
        end = (r1 - 1) * Wq + OW
        pos, oh, ow = r0 * Wq, r0, 0
        while pos < end:
            for mb in range(nmb):
                if short:
                    tile_short(xf, pos, pos, offs, w, mb * K * mr, yf, mb * mr * OH * OW, OH * OW, oh, ow, Wq, OW, OW, end,
                               bias, mb * mr, min(mr, M - mb * mr), kind == 1)
                else:
                    tile(xf, pos, pos, offs, w, mb * K * mr, yf, mb * mr * OH * OW, OH * OW, oh, ow, Wq, OW, OW, end, bias,
                         mb * mr, min(mr, M - mb * mr), kind == 1)
            pos, oh, ow = _next_start_jit(pos, oh, ow, Wq, OW, nr)
        if kind > 1:
            for m in range(M):
                seg = yf[(m * OH + r0) * OW:(m * OH + r1) * OW]
                act_inplace(seg, kind, a0, a1)


conv_tile = Twin(_conv_tile_body)


def pack_weights(w: np.ndarray, b: np.ndarray, mr: int = MR) -> tuple[np.ndarray, np.ndarray]:
    """w (M, K) -> blocks of mr output channels, tap-major: packed[(mb*K + k)*mr + r] =
    w[mb*mr + r, k], zero rows past M; the bias padded with zeros to the same rows."""
    m, k = w.shape
    nmb = -(-m // mr)
    wpad = np.zeros((nmb * mr, k), np.float32)
    wpad[:m] = w
    bpad = np.zeros(nmb * mr, np.float32)
    bpad[:m] = b
    return np.ascontiguousarray(wpad.reshape(nmb, mr, k).transpose(0, 2, 1)).reshape(-1), bpad


def geometry(c: int, out_hw, kernel, strides, dil, pads) -> tuple[np.ndarray, tuple, int]:
    """(offs, geo, plane floats) of conv_tile for ``c`` input channels: offs[(c, ki, kj)] is where
    tap (ki, kj) of channel c starts in an image's flattened planes; geo = (sh, sw, Hq, Wq, pt,
    pl, sampled). A 1x1 kernel reads one phase only: its planes are the input sampled at the
    stride (OH x OW each, ``sampled``), not all sh * sw phases."""
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, strides, dil
    if (kh, kw) == (1, 1):
        offs = np.arange(c, dtype=np.int64) * (oh * ow)
        return offs, (sh, sw, oh, ow, pads[0], pads[1], True), c * oh * ow
    hq, wq = oh + (kh - 1) * dh // sh, ow + (kw - 1) * dw // sw
    offs = np.array([(((ch * sh + ki * dh % sh) * sw + kj * dw % sw) * hq + ki * dh // sh) * wq + kj * dw // sw
                     for ch in range(c) for ki in range(kh) for kj in range(kw)], np.int64)
    return offs, (sh, sw, hq, wq, pads[0], pads[1], False), c * sh * sw * hq * wq


def waste(oh: int, ow: int, wq: int, chunks: int = 1, nr: int = NR) -> float:
    """Fraction of the computed positions that are thrown away: the wide columns that tiles of nr
    positions cover and the end of the last tile of every chunk of rows."""
    rows = -(-oh // chunks)
    done = 0
    for r0 in range(0, oh, rows):
        pos, r, c = r0 * wq, r0, 0
        while pos < (min(oh, r0 + rows) - 1) * wq + ow:
            done += nr
            pos, r, c = _next_start(pos, r, c, wq, ow, nr)
    return 1.0 - oh * ow / done


def chunks_of(n: int, oh: int, threads: int) -> int:
    """Row runs per image: one with one thread, else enough for every thread to get the same
    number of tasks (images x runs)."""
    if threads <= 1:
        return 1
    c = -(-threads // n)
    while (n * c) % threads and c < oh:
        c += 1
    return min(c, oh)
