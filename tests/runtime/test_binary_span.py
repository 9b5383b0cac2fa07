"""binary_span.span_float, the panel path's float output stage of one run of pixels, against numpy:
every run length from none to several vectors and a bit (the overlapping last vector, the
scalar runs shorter than a vector), with a residual, without one and with the residual in the
output's own buffer, values equal to the bit to the scalar formula."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.kernels.binary_span import span_float
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
