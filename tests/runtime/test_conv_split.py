"""conv_gemm.phase_split (the stride phases of conv.py, split by vector shuffles for column
strides 2-4 in runtime/kernels/conv_split.py) against a position-by-position reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.kernels.conv_gemm import phase_split


def _reference(x: np.ndarray, xq: np.ndarray, pt: int, pl: int) -> None:
    C, H, W = x.shape
    _, sh, sw, Hq, Wq = xq.shape
    for c, pr, pc, a, b in itertools.product(range(C), range(sh), range(sw), range(Hq), range(Wq)):
        h, w = a * sh + pr - pt, b * sw + pc - pl
        if 0 <= h < H and 0 <= w < W:
            xq[c, pr, pc, a, b] = x[c, h, w]


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64, np.uint8])
@pytest.mark.parametrize("sh,sw", [(1, 1), (2, 2), (1, 3), (4, 4), (3, 2), (2, 5)])
def test_phase_split_matches_reference(dtype, sh, sw):
    """Every width around the shuffled blocks' edges (a row shorter than one block, a last
    block overlapping the others, phase planes narrower than the row needs); the padding keeps
    the buffer's values."""
    rng = np.random.default_rng(sh * 10 + sw)
    for W, pl, extra in itertools.product((1, 7, 16, 33, 64, 100, 224), (0, 1, 3, 5), (0, 1, 5, 30)):
        H, pt = 5, 1
        Wq = (W + pl + sw - 1) // sw + extra - 2
        if Wq < 1:
            continue
        Hq = (H + 2 + sh - 1) // sh
        x = (rng.standard_normal((2, H, W)) * 100).astype(dtype)
        got = np.full((2, sh, sw, Hq, Wq), 77, dtype)
        want = got.copy()
        phase_split(x, got, pt, pl)
        _reference(x, want, pt, pl)
        np.testing.assert_array_equal(got, want, err_msg=f"W={W} pl={pl} Wq={Wq}")
