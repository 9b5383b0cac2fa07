"""One input row split into its column stride phases with vector shuffles (conv_gemm.phase_split).

Column phase p of a row holds every sw-th value from p on: ``dst[p * pstride + j] = src[sw * j +
p]``. A constant-stride loop per phase (``dst[j] = src[sw * j]``) reads the row sw times and
leaves LLVM gathers or scalar moves; here each block of sw * 8 consecutive values is loaded once
as one vector and split into its sw phases by constant shuffles (``vpermt2ps`` on AVX-512, ``uzp``
on NEON), one 8-float store per phase:

    v = src[8*sw*i : 8*sw*(i+1)]        dst[p * pstride + 8*i + j] = v[sw * j + p]   (j < 8)

For the XNOR-Net stem (3 x 224 x 224 in 16 phases of stride 4) the split took 80 us of a 340 us
convolution through the per-phase loops. Made for strides 2 and 4 (the
common ones; each is compiled into every caller); other strides keep the loops.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

BLOCK = 8  # values per phase per block
_i32, _i64, _f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()


def _make_split(sw: int):
    vin = ir.VectorType(_f32, sw * BLOCK)
    vout = ir.VectorType(_f32, BLOCK)
    undef = ir.Constant(vin, ir.Undefined)

    def split(typingctx, dst, d0, pstride, src, s0, n):
        sig = types.void(dst, d0, pstride, src, s0, n)

        def codegen(context, builder, sig, args):
            dst_, d0_, ps_, src_, s0_, n_ = args
            dp = builder.gep(context.make_array(sig.args[0])(context, builder, dst_).data, [d0_])
            sp = builder.gep(context.make_array(sig.args[3])(context, builder, src_).data, [s0_])
            outs = [builder.gep(dp, [builder.mul(ir.Constant(_i64, p), ps_)]) for p in range(sw)]
            with cgutils.for_range(builder, n_) as loop:
                i = loop.index
                at = builder.mul(i, ir.Constant(_i64, sw * BLOCK))
                v = builder.load(builder.bitcast(builder.gep(sp, [at]), vin.as_pointer()), align=4)
                to = builder.mul(i, ir.Constant(_i64, BLOCK))
                for p in range(sw):
                    mask = ir.Constant(ir.VectorType(_i32, BLOCK), [sw * j + p for j in range(BLOCK)])
                    part = builder.shuffle_vector(v, undef, mask)
                    builder.store(part, builder.bitcast(builder.gep(outs[p], [to]), vout.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    split.__doc__ = f"""dst[d0 + p * pstride + {BLOCK} * i + j] = src[s0 + {sw * BLOCK} * i + {sw} * j + p] for
    p < {sw}, j < {BLOCK}, i < n (module docstring)."""
    return intrinsic(split)


split2 = _make_split(2)
split4 = _make_split(4)
