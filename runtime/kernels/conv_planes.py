"""The input planes the register tiles read (conv_tile.py, conv_panel.py), and vector copies.

``split_input`` writes one channel of one image into its planes: the zero-padded image split
into stride phases (conv_gemm.phase_split; with stride 1 that is the padded image itself, copied
row by row here), or, for a 1x1 kernel, the input sampled at the stride. Only the interior is
written: the padding keeps the zeros the buffer was made with.

``copy_rows`` and ``copy_run`` copy float32 runs as vectors of 8 (``_V8``; two registers on NEON):
Numba's own loop over ``dst[i] = src[i]`` wraps every index that may be negative and leaves runs
of 8 or 16 floats to its scalar remainder loop, several times slower on the short rows of small
planes.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.conv_gemm import copy_strided, phase_split

_i64 = ir.IntType(64)
_V8 = ir.VectorType(ir.FloatType(), 8)


def _copy8(builder, d, s, at):
    v = builder.load(builder.bitcast(builder.gep(s, [at]), _V8.as_pointer()), align=4)
    builder.store(v, builder.bitcast(builder.gep(d, [at]), _V8.as_pointer()), align=4)


@intrinsic
def copy_rows(typingctx, dst, d0, dstride, src, s0, offs, n):
    """dst[d0 + k * dstride + i] = src[s0 + offs[k] + i] for every k and i < n rounded up to a
    multiple of 8 (so up to 7 floats past each run are read and written)."""
    sig = types.void(dst, d0, dstride, src, s0, offs, n)

    def codegen(context, builder, sig, args):
        dst_, d0_, ds_, src_, s0_, offs_, n_ = args
        dp = builder.gep(context.make_array(sig.args[0])(context, builder, dst_).data, [d0_])
        sp = builder.gep(context.make_array(sig.args[3])(context, builder, src_).data, [s0_])
        offs_a = context.make_array(sig.args[5])(context, builder, offs_)
        chunks = builder.sdiv(builder.add(n_, ir.Constant(_i64, 7)), ir.Constant(_i64, 8))
        short = builder.icmp_signed("<=", chunks, ir.Constant(_i64, 2))
        with builder.if_else(short, likely=True) as (one_or_two, more):
            with one_or_two:  # the rows of small planes: a loop of one copy (or two) per k
                two = builder.icmp_signed("==", chunks, ir.Constant(_i64, 2))
                with cgutils.for_range(builder, offs_a.nitems) as row:
                    s = builder.gep(sp, [builder.load(builder.gep(offs_a.data, [row.index]))])
                    d = builder.gep(dp, [builder.mul(row.index, ds_)])
                    _copy8(builder, d, s, ir.Constant(_i64, 0))
                    with builder.if_then(two):
                        _copy8(builder, d, s, ir.Constant(_i64, 8))
            with more:
                with cgutils.for_range(builder, offs_a.nitems) as row:
                    s = builder.gep(sp, [builder.load(builder.gep(offs_a.data, [row.index]))])
                    d = builder.gep(dp, [builder.mul(row.index, ds_)])
                    with cgutils.for_range(builder, chunks) as chunk:
                        _copy8(builder, d, s, builder.mul(chunk.index, ir.Constant(_i64, 8)))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def pack_runs(xq, pan, offs, q0, plane, OW, Wq, Q, width, rs):
    """pan[k * rs + j] = xq[n, offs[k] + oh * Wq + ow] for the batch's positions q0 + j = n * plane
    + oh * OW + ow < Q, j < width: a panel of ``width`` positions (rows ``rs`` floats apart), one
    run of output columns at a time (``copy_rows``). Inlined, so ``width`` and ``rs`` stay the
    caller's constants."""
    j = 0
    while j < width and q0 + j < Q:
        q = q0 + j
        n = q // plane
        p = q - n * plane
        oh = p // OW
        ow = p - oh * OW
        run = min(OW - ow, width - j)
        copy_rows(pan, j, rs, xq[n], oh * Wq + ow, offs, run)
        j += run


@intrinsic
def copy_run(typingctx, dst, d0, src, s0, n):
    """dst[d0 + i] = src[s0 + i] for i < n exactly: vectors of 8, then single floats."""
    sig = types.void(dst, d0, src, s0, n)

    def codegen(context, builder, sig, args):
        dst_, d0_, src_, s0_, n_ = args
        dp = builder.gep(context.make_array(sig.args[0])(context, builder, dst_).data, [d0_])
        sp = builder.gep(context.make_array(sig.args[2])(context, builder, src_).data, [s0_])
        eight = ir.Constant(_i64, 8)
        whole = builder.sdiv(n_, eight)
        with cgutils.for_range(builder, whole) as chunk:
            _copy8(builder, dp, sp, builder.mul(chunk.index, eight))
        with cgutils.for_range(builder, builder.sub(n_, builder.mul(whole, eight))) as tail:
            at = builder.add(builder.mul(whole, eight), tail.index)
            builder.store(builder.load(builder.gep(sp, [at])), builder.gep(dp, [at]))
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _sample(x, xq, sh, sw, pt, pl):
    """xq[a, b] = x[a*sh - pt, b*sw - pl] where that is inside x (H, W) (the rest is padding,
    never written)."""
    H, W = x.shape
    Hq, Wq = xq.shape
    for a in range(Hq):
        h = a * sh - pt
        if h < 0 or h >= H:
            continue
        b0 = min(Wq, max(0, -(-pl // sw)))
        b1 = max(b0, min(Wq, (W - 1 + pl) // sw + 1))
        # 0-based slices and constant strides: loops LLVM vectorizes (conv_gemm.phase_split)
        src, dst, cnt = x[h, b0 * sw - pl:], xq[a, b0:], b1 - b0
        if sw == 1:
            copy_run(dst, 0, src, 0, cnt)
        else:
            copy_strided(dst, src, cnt, sw)


@njit(cache=True, nogil=True)
def split_input(x, xq, nc, geo):
    """Channel nc % C of image nc // C of x (N, C, H, W) into its planes in xq (N, >= C * planes):
    the stride phases or, for a 1x1 kernel (geo's ``sampled``), the input sampled at the stride
    (conv_tile.geometry)."""
    N, C, H, W = x.shape
    sh, sw, Hq, Wq, pt, pl, sampled = geo
    ps = Hq * Wq if sampled else sh * sw * Hq * Wq  # one channel's planes
    n = nc // C
    c = nc - n * C
    if sampled:
        _sample(x[n, c], xq[n, c * ps:(c + 1) * ps].reshape(Hq, Wq), sh, sw, pt, pl)
    elif sh == 1 and sw == 1:  # the padded image: row h at row h + pt, column pl
        rows, cols = min(H, Hq - pt), min(W, Wq - pl)
        xf = x.reshape(N * C * H * W)
        for h in range(rows):
            copy_run(xq[n], (c * Hq + h + pt) * Wq + pl, xf, (nc * H + h) * W, cols)
    else:
        phase_split(x[n, c:c + 1], xq[n, c * ps:(c + 1) * ps].reshape(1, sh, sw, Hq, Wq), pt, pl)
