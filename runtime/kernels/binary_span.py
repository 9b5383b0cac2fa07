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

``span_block`` does the same on eight channel rows at once and takes their sign and nonzero
bits as it goes (a float output that also feeds a binarizer: binary_conv_stage.py).
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

    def pixels(at, with_r, vector):  # the value of pixels at .. at + LANES - 1 (or of pixel at)
        vt_i, vt_f = (_IV, _FV) if vector else (_i32, _f32)
        scale, bias, m = (scv, biv, multv) if vector else (sc, bi, builder.trunc(mult, _i32))
        s = builder.sub(_load(builder, bp, at, vt_i), builder.mul(m, _load(builder, ap, at, vt_i)))
        v = builder.fadd(builder.fmul(builder.sitofp(s, vt_f), scale), bias)
        return builder.fadd(v, _load(builder, rp, at, vt_f)) if with_r else v

    _over_pixels(builder, n, has_r, pixels, lambda at, v, vector: _put(builder, yp, at, v))
    return context.get_dummy_value()


def _load(builder, p, at, vt):
    """The value (a vector when vt is one) at element ``at`` of the array data p."""
    ptr = builder.gep(p, [at])
    return builder.load(builder.bitcast(ptr, vt.as_pointer()) if isinstance(vt, ir.VectorType) else ptr, align=4)


def _put(builder, p, at, v):
    """Store v (a vector or one value) at element ``at`` of the array data p."""
    ptr = builder.gep(p, [at])
    builder.store(v, builder.bitcast(ptr, v.type.as_pointer()) if isinstance(v.type, ir.VectorType) else ptr, align=4)


def _store_rows(builder, rows):
    """The ``store`` of ``_over_pixels`` that puts value i (a vector or one value) into the
    row data rows[i] at the pixel."""

    def store(at, values, vector):
        for p, v in zip(rows, values):
            _put(builder, p, at, v)

    return store


def _over_pixels(builder, n, has_r, compute, store):
    """The loop of both spans over pixels 0 .. n - 1: ``compute(at, with_r, vector)`` the
    values at pixel at (a vector of LANES pixels, or one), ``store(at, values, vector)``. The
    last vector ends at pixel n - 1 and overlaps the one before it: computed first, before any
    store (R may be y), stored last. Fewer than LANES pixels go one by one. Both branches of
    the run-time ``has_r``."""
    full = builder.and_(n, ir.Constant(_i64, -LANES))

    def run(with_r):
        with builder.if_else(builder.icmp_signed(">=", n, ir.Constant(_i64, LANES))) as (vectors, scalars):
            with vectors:
                last = builder.sub(n, ir.Constant(_i64, LANES))
                tail = compute(last, with_r, True)
                with cgutils.for_range_slice(builder, ir.Constant(_i64, 0), full, ir.Constant(_i64, LANES)) as (at, _):
                    store(at, compute(at, with_r, True), True)
                store(last, tail, True)
            with scalars:
                with cgutils.for_range(builder, n) as loop:
                    store(loop.index, compute(loop.index, with_r, False), False)

    with builder.if_else(has_r) as (then, otherwise):
        with then:
            run(True)
        with otherwise:
            run(False)


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


BLOCK = 8  # channel rows of ``span_block``: a pixel's sign bits of the block in one 32-bit lane


def _rows(builder, arr, rows, elt):
    """Pointers to the first ``rows`` rows of a 2-D array (any row stride, unit inner stride)."""
    data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    stride = builder.extract_value(arr.strides, 0)
    return [builder.bitcast(builder.gep(data, [builder.mul(stride, ir.Constant(_i64, j))]), elt.as_pointer()) for j in range(rows)]


def _zero_negative(builder, bz):
    """The bits a value of 0 (or NaN) sets in the sign lane: all BLOCK of them when ``bz`` is
    -1 (such a value is negative), none otherwise (``binary_common.sign_flags``)."""
    return builder.select(builder.icmp_signed("==", bz, ir.Constant(_i64, -1)), ir.Constant(_i32, (1 << BLOCK) - 1), ir.Constant(_i32, 0))


def _sign_lanes(builder, ys, zneg, vector):
    """(negative, nonzero) 32-bit lanes of the BLOCK float rows' values ``ys`` (vectors when
    ``vector``), row j's flag at bit j: neg = (v < 0) | (not nonzero & zneg), nonzero =
    v != 0 (ordered: NaN is not), as ``binary_common.sign_flags``."""
    vt_i, vt_f = (_IV, _FV) if vector else (_i32, _f32)

    def splat(v):
        return _splat(builder, v, vt_i) if vector else v

    neg = nz = ir.Constant(vt_i, None)
    fz = ir.Constant(vt_f, None)
    for j, v in enumerate(ys):
        bit = splat(ir.Constant(_i32, j))
        neg = builder.or_(neg, builder.shl(builder.zext(builder.fcmp_ordered("<", v, fz), vt_i), bit))
        nz = builder.or_(nz, builder.shl(builder.zext(builder.fcmp_ordered("!=", v, fz), vt_i), bit))
    return builder.or_(neg, builder.and_(builder.xor(nz, splat(ir.Constant(_i32, -1))), splat(zneg))), nz


def _block_codegen(context, builder, sig, args):
    b_, a_, y_, r_, has_r, mult, sc_, bi_, bz, fl_ = args
    b, a, y, r, sc, bi, fl = (context.make_array(t)(context, builder, v) for t, v in
                              zip(sig.args[:4] + sig.args[6:8] + sig.args[9:10], (b_, a_, y_, r_, sc_, bi_, fl_)))
    bp, ap, yp, rp = (_rows(builder, arr, BLOCK, elt) for arr, elt in ((b, _i32), (a, _i32), (y, _f32), (r, _f32)))
    fp = _rows(builder, fl, 2, _i32)
    n = builder.extract_value(a.shape, 1)
    scs = [builder.load(builder.gep(sc.data, [ir.Constant(_i64, j)])) for j in range(BLOCK)]
    bis = [builder.load(builder.gep(bi.data, [ir.Constant(_i64, j)])) for j in range(BLOCK)]
    zneg = _zero_negative(builder, bz)

    def pixels(at, with_r, vector):  # [y of the BLOCK rows, neg, nonzero] at pixels at ..
        vt_i, vt_f = (_IV, _FV) if vector else (_i32, _f32)

        def load(p, vt):
            return _load(builder, p, at, vt)

        def splat(v, vt):
            return _splat(builder, v, vt) if vector else v

        m = splat(builder.trunc(mult, _i32), vt_i)
        ys = []
        for j in range(BLOCK):
            s = builder.sub(load(bp[j], vt_i), builder.mul(m, load(ap[j], vt_i)))
            v = builder.fadd(builder.fmul(builder.sitofp(s, vt_f), splat(scs[j], vt_f)), splat(bis[j], vt_f))
            v = builder.fadd(v, load(rp[j], vt_f)) if with_r else v
            ys.append(v)
        return ys + list(_sign_lanes(builder, ys, zneg, vector))

    _over_pixels(builder, n, has_r, pixels, _store_rows(builder, yp + fp))
    return context.get_dummy_value()


@intrinsic
def span_block(typingctx, b, a, y, r, has_r, mult, sc, bi, bz, fl):
    """``span_float`` on BLOCK = 8 channel rows at once: rows j < 8 of the 2-D arrays b, a
    (int32), y and r (float32, r may be y), each row of unit stride, with sc[j] and bi[j] the
    row's scale and bias; and a pixel's sign and nonzero bits of the block's
    rows (bit j: row j; the value at 0 ``bz`` as ``binary_common.sign_flags``) into the uint32
    rows fl[0] and fl[1], so that the bits need no second pass over y. One pass per block where
    ``span_float`` takes one per channel, so a pass's fixed cost (views, the tail vector) is
    paid once per block. The loop reads and writes eight rows of each array a vector at a time:
    rows whose stride is a multiple of 4 KB fall into one set of the L1 cache and evict one
    another (2048-float rows ran 10x slower than 784-float ones); the caller keeps such rows
    off it (binary_conv_stage._spread)."""
    arrays2 = (b, a, y, r, fl)
    ok = (all(isinstance(t, types.Array) and t.ndim == 2 for t in arrays2) and b.dtype == a.dtype == types.int32
          and y.dtype == r.dtype == types.float32 and fl.dtype == types.uint32
          and all(isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.float32 for t in (sc, bi)))
    if not ok:
        return None
    sig = types.void(b, a, y, r, types.boolean, types.int64, sc, bi, types.int64, fl)
    return sig, _block_codegen


_RULE_CLAMP = 1 << 30  # |s| stays far below this (s is at most a layer's input bits)


def _bits_codegen(context, builder, sig, args):
    b_, a_, mult, rule_, two, fl_ = args
    b, a, rule, fl = (context.make_array(sig.args[i])(context, builder, v) for i, v in ((0, b_), (1, a_), (3, rule_), (5, fl_)))
    bp, ap = (_rows(builder, arr, BLOCK, _i32) for arr in (b, a))
    rp = _rows(builder, rule, 8, _i64)
    fp = _rows(builder, fl, 2, _i32)
    n = builder.extract_value(a.shape, 1)

    def clamp(v):  # an int64 bound as an int32 that compares with every s the same way
        lim = ir.Constant(_i64, _RULE_CLAMP)
        v = builder.select(builder.icmp_signed(">", v, lim), lim, v)
        v = builder.select(builder.icmp_signed("<", v, builder.neg(lim)), builder.neg(lim), v)
        return builder.trunc(v, _i32)

    def rule_at(row, j):
        return builder.load(builder.gep(rp[row], [ir.Constant(_i64, j)]))

    los = [clamp(rule_at(0, j)) for j in range(BLOCK)]
    his = [clamp(rule_at(1, j)) for j in range(BLOCK)]
    # flag (0 / -1) of plane k below / mid / above as bit j: row 2 + 3k + case
    bits = [[[builder.and_(builder.trunc(rule_at(2 + 3 * k + case, j), _i32), ir.Constant(_i32, 1 << j)) for case in range(3)]
             for j in range(BLOCK)] for k in range(2)]

    def pixels(at, with_two, vector):  # the flag rows' values (plane 0, and plane 1 if with_two) at pixels at ..
        vt = _IV if vector else _i32

        def splat(v):
            return _splat(builder, v, vt) if vector else v

        m = splat(builder.trunc(mult, _i32))
        out = [ir.Constant(vt, None) for _ in range(2 if with_two else 1)]
        for j in range(BLOCK):
            s = builder.sub(_load(builder, bp[j], at, vt), builder.mul(m, _load(builder, ap[j], at, vt)))
            lt = builder.icmp_signed("<", s, splat(los[j]))
            le = builder.icmp_signed("<=", s, splat(his[j]))
            for k in range(len(out)):
                below, mid, above = (splat(v) for v in bits[k][j])
                out[k] = builder.or_(out[k], builder.select(lt, below, builder.select(le, mid, above)))
        return out

    _over_pixels(builder, n, two, pixels, _store_rows(builder, fp))
    return context.get_dummy_value()


@intrinsic
def span_bits(typingctx, b, a, mult, rule, two, fl):
    """The bits output stage of BLOCK = 8 channel rows at once: for row j < 8 of the int32 2-D
    arrays b and a (unit inner stride), s = b[j] - mult * a[j] and its rule's flag, bit j of
    the uint32 row fl[0] (and, when ``two``, the nonzero mask's flag in fl[1]); ``rule`` the
    block's columns of ``binary_common.rule_table`` (int64 [8, >= 8]: lo, hi, then the 0 / -1
    flags below lo, up to hi, above hi, of the sign and then of the mask). The bounds are
    clamped to +-2^30, which no s reaches, so the compare stays in 32-bit lanes; a pixel's
    eight flags gather in one lane, as ``span_block``'s, and the caller ORs them into its
    64-bit words once per block (``binary_conv_stage.or_flag_rows``). A loop per channel ORed
    every flag into its 64-bit word: 64-bit lanes mixed with the 32-bit counts, about 0.9 ns a
    value on CNV's 10x10 layer."""
    ok = (all(isinstance(t, types.Array) and t.ndim == 2 for t in (b, a, rule, fl)) and b.dtype == a.dtype == types.int32
          and rule.dtype == types.int64 and fl.dtype == types.uint32)
    if not ok:
        return None
    return types.void(b, a, types.int64, rule, types.boolean, fl), _bits_codegen


def _signs_codegen(context, builder, sig, args):
    x_, bz, two, fl_ = args
    x, fl = (context.make_array(sig.args[i])(context, builder, v) for i, v in ((0, x_), (3, fl_)))
    xp, fp = _rows(builder, x, BLOCK, _f32), _rows(builder, fl, 2, _i32)
    zneg = _zero_negative(builder, bz)

    def pixels(at, with_two, vector):
        neg, nz = _sign_lanes(builder, [_load(builder, p, at, _FV if vector else _f32) for p in xp], zneg, vector)
        return (neg, nz) if with_two else (neg,)

    _over_pixels(builder, builder.extract_value(x.shape, 1), two, pixels, _store_rows(builder, fp))
    return context.get_dummy_value()


@intrinsic
def span_signs(typingctx, x, bz, two, fl):
    """The sign flags of BLOCK = 8 float32 rows at once (rows j < 8 of the 2-D x, unit inner
    stride): a pixel's sign bits in the uint32 row fl[0] (bit j: row j; the value at 0 ``bz``
    as ``binary_common.sign_flags``) and, when ``two``, its nonzero bits in fl[1]: Binarize
    (binary_misc.py) eight channels a pass, where a pass per channel ORs each bit into its
    64-bit word (1.35-1.5x the time on the corpus's NCHW shapes)."""
    ok = (isinstance(x, types.Array) and x.ndim == 2 and x.dtype == types.float32 and isinstance(fl, types.Array)
          and fl.ndim == 2 and fl.dtype == types.uint32)
    if not ok:
        return None
    return types.void(x, types.int64, types.boolean, fl), _signs_codegen
