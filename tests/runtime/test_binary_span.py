"""binary_span.span_float, the panel path's float output stage of one run of pixels, and
span_block, the same on a block of eight channel rows with their sign and nonzero bits, against
numpy: every run length from none to several vectors and a bit (the overlapping last vector,
the scalar runs shorter than a vector), with a residual, without one and with the residual in
the output's own buffer, values equal to the bit to the scalar formula; the bits as
binary_common.sign_flags takes them (values of 0, -0 and NaN among them, every value at 0);
and span_bits, a block's rule flags of the bits output stage, against binary_common.rule_flag."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.kernels.binary_common import rule_flag, rule_table
from runtime.kernels.binary_span import BLOCK, span_bits, span_block, span_float
from runtime.kernels.conv_tile import LANES


@njit
def _run(b, a, y, r, q0, q1, has_r, mult, sc, bi):
    span_float(b[q0:q1], a[q0:q1], y[q0:q1], r[q0:q1], has_r, mult, sc, bi)


def _expect(b, a, r, has_r, mult, sc, bi):
    s = (b.astype(np.int64) - mult * a.astype(np.int64)).astype(np.int32).astype(np.float32)
    v = s * np.float32(sc) + np.float32(bi)
    return v + r if has_r else v


@pytest.mark.parametrize("residual", ["none", "own", "output's buffer"])
@pytest.mark.parametrize("mult", [1, 2])
def test_span_float_every_length(residual, mult):
    rng = np.random.default_rng(mult)
    sc, bi = np.float32(0.37), np.float32(-1.25)
    for n in range(0, 3 * LANES + 2):
        size = n + 4
        b = rng.integers(-300, 300, size, dtype=np.int32)
        a = rng.integers(0, 200, size, dtype=np.int32)
        r = rng.standard_normal(size).astype(np.float32)
        y = r.copy() if residual == "output's buffer" else np.full(size, np.nan, np.float32)
        before = y.copy()
        _run(b, a, y, y if residual == "output's buffer" else r, 2, 2 + n, residual != "none", mult, sc, bi)
        expect = _expect(b[2:2 + n], a[2:2 + n], r[2:2 + n], residual != "none", mult, sc, bi)
        assert y[2:2 + n].tobytes() == expect.tobytes(), n
        np.testing.assert_array_equal(y[:2], before[:2])  # nothing written outside the run
        np.testing.assert_array_equal(y[2 + n:], before[2 + n:])


@njit
def _run_block(b, a, y, r, q0, q1, has_r, mult, sc, bi, bz, fl):
    span_block(b[:, q0:q1], a[:, q0:q1], y[:, q0:q1], r[:, q0:q1], has_r, mult, sc, bi, bz, fl[:, q0:q1])


def _expect_bits(v, bz):
    """sign_flags' bits of the rows of v, row j at bit j: (negative, nonzero) as uint32 per pixel."""
    nz = (v > 0) | (v < 0)
    neg = ~(v > 0) if bz == -1 else v < 0
    weights = (1 << np.arange(v.shape[0], dtype=np.uint32))[:, None]
    return (neg * weights).sum(axis=0, dtype=np.uint32), (nz * weights).sum(axis=0, dtype=np.uint32)


@pytest.mark.parametrize("bz", [-1, 0, 1])
@pytest.mark.parametrize("residual", ["none", "own", "output's buffer"])
@pytest.mark.parametrize("mult", [1, 2])
def test_span_block_every_length(bz, residual, mult):
    rng = np.random.default_rng(mult + 3 * (bz + 1))
    sc = rng.uniform(0.2, 1.5, BLOCK).astype(np.float32)
    bi = rng.standard_normal(BLOCK).astype(np.float32)
    sc[0], bi[0] = 1.0, 0.0  # row 0: s = 0 gives 0 (or -0 with a residual of -0)
    for n in range(0, 3 * LANES + 2):
        size = n + 5  # rows of odd strides: row j's pixels are not aligned as row 0's
        b = rng.integers(-300, 300, (BLOCK + 1, size), dtype=np.int32)[1:]
        a = rng.integers(0, 200, (BLOCK, size), dtype=np.int32)
        b[0, ::3] = mult * a[0, ::3]  # s = 0 in row 0
        r = rng.standard_normal((BLOCK, size)).astype(np.float32)
        r[0, ::3] = 0.0
        r[0, 1::6] = -0.0
        r[1, ::4] = np.nan
        y = r.copy() if residual == "output's buffer" else np.full((BLOCK, size), 7.0, np.float32)
        before = y.copy()
        fl = np.full((2, size), 0xFFFF, np.uint32)
        _run_block(b, a, y, y if residual == "output's buffer" else r, 2, 2 + n, residual != "none", mult, sc, bi, bz, fl)
        expect = np.stack([_expect(b[j, 2:2 + n], a[j, 2:2 + n], r[j, 2:2 + n], residual != "none", mult, sc[j], bi[j])
                           for j in range(BLOCK)])
        assert y[:, 2:2 + n].tobytes() == expect.tobytes(), n
        np.testing.assert_array_equal(y[:, :2], before[:, :2])
        np.testing.assert_array_equal(y[:, 2 + n:], before[:, 2 + n:])
        neg, nz = _expect_bits(expect, bz)
        np.testing.assert_array_equal(fl[0, 2:2 + n], neg, err_msg=str(n))
        np.testing.assert_array_equal(fl[1, 2:2 + n], nz, err_msg=str(n))
        assert (fl[:, :2] == 0xFFFF).all() and (fl[:, 2 + n:] == 0xFFFF).all()


@njit
def _run_bits(b, a, q0, q1, mult, table, two, fl):
    span_bits(b[:, q0:q1], a[:, q0:q1], mult, table, two, fl[:, q0:q1])


@pytest.mark.parametrize("two", [False, True])
@pytest.mark.parametrize("mult", [1, 2])
def test_span_bits_every_length(two, mult):
    """Every flag (s below lo, at lo, between, at hi, above hi; every below / mid / above flag
    of both planes; bounds far beyond int32, which the kernel clamps) as rule_flag gives it."""
    rng = np.random.default_rng(mult + 2 * two)
    rule = np.zeros((BLOCK, 5), np.int64)
    rule[:, 0] = rng.integers(-40, 40, BLOCK)
    rule[:, 1] = rule[:, 0] + rng.integers(0, 3, BLOCK)
    rule[:, 2:] = rng.integers(-1, 2, (BLOCK, 3))
    rule[0, 2:] = (1, 0, -1)
    rule[1, :2] = (-(1 << 40), 1 << 40)  # every s is mid
    rule[2, :2] = (1 << 35, 1 << 36)  # every s is below
    rule[3, :2] = (-(1 << 36), -(1 << 35))  # every s is above
    table = rule_table(rule)
    wide = np.zeros((8, 3 * BLOCK), np.int64)
    wide[:, BLOCK:2 * BLOCK] = table  # the block's columns of a wider table
    for n in range(0, 3 * LANES + 2):
        size = n + 5
        a = rng.integers(0, 30, (BLOCK, size), dtype=np.int32)
        b = (mult * a + rng.integers(-45, 45, (BLOCK, size))).astype(np.int32)
        b[:, ::2] = (mult * a[:, ::2] + rule[:, 0:1] + rng.integers(-1, 2, (BLOCK, 1))).astype(np.int32)  # around lo
        b[:, 1::3] = (mult * a[:, 1::3] + rule[:, 1:2] + rng.integers(-1, 2, (BLOCK, 1))).astype(np.int32)  # around hi
        b[1:4] = rng.integers(-300, 300, (3, size), dtype=np.int32)
        fl = np.full((2, size), 0xFFFF0000, np.uint32)
        _run_bits(b, a, 2, 2 + n, mult, wide[:, BLOCK:2 * BLOCK], two, fl)
        for k in range(1 + two):
            expect = np.zeros(n, np.uint32)
            for j in range(BLOCK):
                for p in range(n):
                    s = int(b[j, 2 + p]) - mult * int(a[j, 2 + p])
                    f = rule_flag(s, table[0, j], table[1, j], table[2 + 3 * k, j], table[3 + 3 * k, j], table[4 + 3 * k, j])
                    expect[p] |= np.uint32((f & 1) << j)
            np.testing.assert_array_equal(fl[k, 2:2 + n], expect, err_msg=f"plane {k}, {n} pixels")
        assert (fl[:, :2] == 0xFFFF0000).all() and (fl[:, 2 + n:] == 0xFFFF0000).all()
        if not two:
            assert (fl[1] == 0xFFFF0000).all()
