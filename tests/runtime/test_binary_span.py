"""binary_span.span_float, the panel path's float output stage of one run of pixels, and
span_block, the same on a block of eight channel rows with their sign and nonzero bits, against
numpy: every run length from none to several vectors and a bit (the overlapping last vector,
the scalar runs shorter than a vector), with a residual, without one and with the residual in
the output's own buffer, values equal to the bit to the scalar formula; the bits as
binary_common.sign_flags takes them (values of 0, -0 and NaN among them, every value at 0)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.kernels.binary_span import BLOCK, span_block, span_float
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
