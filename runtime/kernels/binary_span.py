"""The float output stage of a run of pixels, in vectors from its first pixel to its last.

``span_float(b, a, y, r, has_r, mult, sc, bi)`` computes, for every p < len(a),

    y[p] = float32(int32(b[p] - mult * a[p])) * sc + bi (+ r[p])

(b a border-table row, a the tile's int32 counts, r the residual, which may be y itself) in
vectors of LANES floats. The last vector ends at the run's last pixel and overlaps the one
before it; it is computed first, before anything is stored (r may be y), and stored last, so
the pixels the two share get the same value twice. (A loop LLVM vectorises itself runs four
vectors at a time and leaves the rest, up to 31 pixels on AVX2, to a scalar loop, which the
panel path's rows of 7 to 56 pixels mostly went through; a masked last vector costs more than
that on AMD's Zen, whose masked stores are slow.) Runs shorter than a vector are scalar.
The operations and their order are those of the scalar code (multiply, then add the bias, then
the residual; no fused multiply-add), so every value is the same to the bit.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from runtime.kernels.conv_tile import LANES

_i32, _i64, _f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_IV, _FV = ir.VectorType(_i32, LANES), ir.VectorType(_f32, LANES)


def _splat(builder, scalar, vt):
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(_i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_i32, LANES), [0] * LANES))


def _codegen(context, builder, sig, args):
    b_, a_, y_, r_, has_r, mult, sc, bi = args
    arrays = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:4], args[:4])]
    bp, ap, yp, rp = (arr.data for arr in arrays)
    n = builder.extract_value(arrays[1].shape, 0)
    multv = _splat(builder, builder.trunc(mult, _i32), _IV)
    scv, biv = _splat(builder, sc, _FV), _splat(builder, bi, _FV)
    full = builder.and_(n, ir.Constant(_i64, -LANES))

    def pixels(at, with_r, vt_i, vt_f):  # the value of pixels at .. at + lanes - 1
        def load(p, vt):
            ptr = builder.gep(p, [at])
            return builder.load(builder.bitcast(ptr, vt.as_pointer()) if isinstance(vt, ir.VectorType) else ptr, align=4)

        scale, bias, m = (scv, biv, multv) if isinstance(vt_f, ir.VectorType) else (sc, bi, builder.trunc(mult, _i32))
        s = builder.sub(load(bp, vt_i), builder.mul(m, load(ap, vt_i)))
        v = builder.fadd(builder.fmul(builder.sitofp(s, vt_f), scale), bias)
        return builder.fadd(v, load(rp, vt_f)) if with_r else v

    def store(at, v):
        ptr = builder.gep(yp, [at])
        builder.store(v, builder.bitcast(ptr, v.type.as_pointer()) if isinstance(v.type, ir.VectorType) else ptr, align=4)

    def run(with_r):
        with builder.if_else(builder.icmp_signed(">=", n, ir.Constant(_i64, LANES))) as (vectors, scalars):
            with vectors:
                last = builder.sub(n, ir.Constant(_i64, LANES))
                tail = pixels(last, with_r, _IV, _FV)  # before any store: R may be y
                with cgutils.for_range_slice(builder, ir.Constant(_i64, 0), full, ir.Constant(_i64, LANES)) as (at, _):
                    store(at, pixels(at, with_r, _IV, _FV))
                store(last, tail)
            with scalars:
                with cgutils.for_range(builder, n) as loop:
                    store(loop.index, pixels(loop.index, with_r, _i32, _f32))

    with builder.if_else(has_r) as (then, otherwise):
        with then:
            run(True)
        with otherwise:
            run(False)
    return context.get_dummy_value()


@intrinsic
def span_float(typingctx, b, a, y, r, has_r, mult, sc, bi):
    """y[p] = float32(int32(b[p] - mult * a[p])) * sc + bi (+ r[p] if has_r) for p < len(a):
    b, a int32 and y, r float32 arrays of one dimension and unit stride (r may be y); mult an
    int64, sc and bi float32 (module docstring)."""
    ok = (all(isinstance(t, types.Array) and t.ndim == 1 for t in (b, a, y, r)) and b.dtype == a.dtype == types.int32
          and y.dtype == r.dtype == types.float32)
    if not ok:
        return None
    return types.void(b, a, y, r, types.boolean, types.int64, types.float32, types.float32), _codegen
