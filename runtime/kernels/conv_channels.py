"""Float convolution as register tiles with output channels in the vectors: any positions, no panel.

The tiles of conv_tile.py hold consecutive positions in their vectors, so they read a tap as a
run of wide positions (wasting the wide columns) or need a packed panel (conv_panel.py, a copy
of every tap's values). Turned around, a tile holds CV * LANES consecutive output channels in
each vector and broadcasts the inputs of PR positions, which may be any positions:

    acc[r][v] += xq[pos[i0 + r] + offs[k]] * w[(cb * K + k) * NC + v * LANES : + LANES]

over the taps k (offs as conv_tile.geometry; pos[q] = n * L + oh * Wq + ow, the position's place
in the flattened phase-split images xq, L floats each), NC = CV * LANES. So the batch's OH * OW
output positions are taken PR at a time, skipping the wide columns, and nothing is packed but
the weights (``pack_weights``, once). The price is the store: a vector holds one position of NC
channel planes, scattered to ystart[q] + m * OH * OW (ystart[q] = n * M * OH * OW + oh * OW + ow;
``llvm.masked.scatter``, one instruction on AVX-512, lane by lane elsewhere): PR * CV scatters
per tile against K * PR * CV vector multiply-adds, so it pays for K in the hundreds (the
binary-weight convs of small planes), not for stems.
The position tables are padded to whole tiles with copies of the last position: those lanes
compute and store the same values again. Bias and Relu are added in the registers; other
activations run over y afterwards. PR and CV fit the host's registers: 12 x 2 on AVX-512 (24
accumulators of 32), 6 x 2 on AVX2 (12 of 16), 6 x 4 on NEON (24 of 32).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.base import Twin
from runtime.kernels.conv_planes import split_input
from runtime.kernels.conv_tile import LANES, _splat
from runtime.kernels.nn import act_inplace

PR, CV = {16: (8, 2), 8: (6, 2)}.get(LANES, (6, 4))
NC = CV * LANES  # output channels per tile
_MAX_PLANE = 256  # output positions per plane, at most (``cost``)
_i32, _i64, _f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_VEC = ir.VectorType(_f32, LANES)
_IVEC = ir.VectorType(_i64, LANES)
_PVEC = ir.VectorType(_f32.as_pointer(), LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)


def _isplat(builder, scalar):
    undef = ir.Constant(_IVEC, ir.Undefined)
    one = builder.insert_element(undef, scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _vload(builder, ptr):
    return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)


def _accumulate(builder, fma, xrows, offs, nk, wb):
    """acc[r][v] += xrows[r][offs[k]] * w[k * NC + v * LANES:]; the accumulators (allocas LLVM
    keeps in registers)."""
    zero = ir.Constant(_VEC, [0.0] * LANES)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(CV)] for _ in range(PR)]
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        o = builder.load(builder.gep(offs, [k]))
        wk = builder.gep(wb, [builder.mul(k, ir.Constant(_i64, NC))])
        ws = [_vload(builder, builder.gep(wk, [ir.Constant(_i64, v * LANES)])) for v in range(CV)]
        for r in range(PR):
            xv = _splat(builder, builder.load(builder.gep(xrows[r], [o])))
            for v in range(CV):
                builder.store(builder.call(fma, [ws[v], xv, builder.load(accs[r][v])]), accs[r][v])
    return accs


@intrinsic
def channel_tile(typingctx, xq, pos, i0, offs, w, bw, y, ystart, yb, plane, bias, bm, mvalid, relu):
    """One PR x NC tile (module docstring): positions pos[i0 + r], channels bm + c (c < mvalid)
    stored at y[yb + c * plane + ystart[i0 + r]]; weights w[bw + k * NC + c], bias[bm + c]."""
    sig = types.void(xq, pos, i0, offs, w, bw, y, ystart, yb, plane, bias, bm, mvalid, relu)

    def codegen(context, builder, sig, args):
        xq_, pos_, i0_, offs_, w_, bw_, y_, ystart_, yb_, plane_, bias_, bm_, mvalid_, relu_ = args

        def arr(i, v):
            return context.make_array(sig.args[i])(context, builder, v)

        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]),
                                             f"llvm.fmuladd.v{LANES}f32")
        xd = arr(0, xq_).data
        posp = builder.gep(arr(1, pos_).data, [i0_])
        xrows = [builder.gep(xd, [builder.load(builder.gep(posp, [ir.Constant(_i64, r)]))]) for r in range(PR)]
        offs_a = arr(3, offs_)
        accs = _accumulate(builder, fma, xrows, offs_a.data, offs_a.nitems, builder.gep(arr(4, w_).data, [bw_]))
        bp = builder.gep(arr(10, bias_).data, [bm_])
        bs = [_vload(builder, builder.gep(bp, [ir.Constant(_i64, v * LANES)])) for v in range(CV)]
        zero = ir.Constant(_VEC, [0.0] * LANES)
        relu_on = builder.icmp_signed("!=", relu_, ir.Constant(relu_.type, 0))
        ys = builder.gep(arr(7, ystart_).data, [i0_])
        yb = builder.gep(arr(6, y_).data, [yb_])
        scatter = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VEC, _PVEC, _i32, _MASK]),
            f"llvm.masked.scatter.v{LANES}f32.v{LANES}p0f32")
        lane = ir.Constant(_IVEC, list(range(LANES)))
        step = builder.mul(_isplat(builder, plane_), lane)  # lane c's offset: c channel planes on
        for r in range(PR):
            yr = builder.gep(yb, [builder.load(builder.gep(ys, [ir.Constant(_i64, r)]))])
            base = _isplat(builder, builder.ptrtoint(yr, _i64))
            for v in range(CV):
                val = builder.fadd(builder.load(accs[r][v]), bs[v])
                val = builder.select(relu_on, builder.select(builder.fcmp_ordered(">", val, zero), val, zero), val)
                first = builder.mul(ir.Constant(_i64, v * LANES), plane_)
                idx = builder.add(step, _isplat(builder, first))
                ptrs = builder.inttoptr(builder.add(base, builder.mul(idx, _isplat(builder, ir.Constant(_i64, 4)))), _PVEC)
                mask = builder.icmp_signed("<", builder.add(lane, _isplat(builder, ir.Constant(_i64, v * LANES))),
                                           _isplat(builder, mvalid_))
                builder.call(scatter, [val, ptrs, ir.Constant(_i32, 4), mask])
        return context.get_dummy_value()

    return sig, codegen


def _conv_channels_body(x, xq, w, bias, y, offs, pos, ystart, geo, kind, a0, a1, tasks):
    """y (N, M, OH, OW) = act(conv(x (N, C, H, W)) + bias) through channel tiles: xq (N, L) the
    phase-split images, w and bias packed by ``pack_weights``, pos and ystart the position tables
    (``positions``), the tiles cut into ``tasks`` runs."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    for nc in prange(N * C):
        split_input(x, xq, nc, geo)
    K = offs.shape[0]
    ncb = -(-M // NC)
    n_tiles = pos.shape[0] // PR
    per = -(-n_tiles // tasks)
    xf, yf = xq.reshape(xq.size), y.reshape(y.size)
    for t in prange(tasks):
        for ti in range(t * per, min(n_tiles, (t + 1) * per)):
            for cb in range(ncb):
                channel_tile(xf, pos, ti * PR, offs, w, cb * K * NC, yf, ystart, cb * NC * OH * OW, OH * OW, bias,
                             cb * NC, min(NC, M - cb * NC), kind == 1)
    if kind > 1:
        for nm in prange(N * M):
            act_inplace(yf[nm * OH * OW:(nm + 1) * OH * OW], kind, a0, a1)


conv_channels = Twin(_conv_channels_body)


def pack_weights(w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (M, K) -> blocks of NC output channels, tap-major: packed[(cb * K + k) * NC + c] =
    w[cb * NC + c, k], zeros past M; the bias padded with zeros likewise."""
    m, k = w.shape
    ncb = -(-m // NC)
    wpad = np.zeros((ncb * NC, k), np.float32)
    wpad[:m] = w
    bpad = np.zeros(ncb * NC, np.float32)
    bpad[:m] = b
    return np.ascontiguousarray(wpad.reshape(ncb, NC, k).transpose(0, 2, 1)).reshape(-1), bpad


def positions(n: int, m: int, out_hw, wq: int, image: int) -> tuple[np.ndarray, np.ndarray]:
    """(pos, ystart) of the batch's output positions, in whole tiles of PR (the last position
    repeated): pos[q] = n * image + oh * wq + ow, ystart[q] = n * m * OH * OW + oh * OW + ow."""
    oh, ow = out_hw
    nn, r, c = np.meshgrid(np.arange(n), np.arange(oh), np.arange(ow), indexing="ij")
    pos, ystart = (nn * image + r * wq + c).reshape(-1), (nn * m * oh * ow + r * ow + c).reshape(-1)
    pad = -len(pos) % PR
    return (np.ascontiguousarray(np.concatenate([pos, np.repeat(pos[-1:], pad)]), np.int64),
            np.ascontiguousarray(np.concatenate([ystart, np.repeat(ystart[-1:], pad)]), np.int64))


def tasks_of(positions: int, threads: int) -> int:
    return max(1, min(threads, -(-positions // PR)))


def cost(n: int, plane: int, m: int, k: int) -> float:
    """Work relative to a plain GEMM for n images of ``plane`` output positions: the padding of
    the last tile and of the last channel block, and the scattered stores, about a vector
    multiply-add per vector stored against K of those. Planes of more than _MAX_PLANE positions
    are left to the other tiles: a scatter's lanes, a plane apart, then fall into few L1 sets
    (4 KiB apart, all into one: 32x32 planes ran at 0.6x the wide rows' speed)."""
    if plane > _MAX_PLANE:
        return float("inf")
    done = -(-n * plane // PR) * PR * -(-m // NC) * NC
    return done / (n * plane * m) * (1.0 + 1.0 / max(k, 1))
