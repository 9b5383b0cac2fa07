"""The per-run input path of InferenceSession.run: the fast path for exactly the compiled inputs
and the full check agree, and non-finite inputs of a binarizing plan are refused whatever the
float type or layout."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import BnncError
from runtime.validate import check_finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.copysign(np.nan, -1.0), np.inf, -np.inf])
def test_check_finite_finds_every_non_finite_value(dtype, bad):
    rng = np.random.default_rng(0)
    for size in (1, 7, 64, 1000):
        x = (rng.standard_normal(size) * 1e3).astype(dtype)
        x[-1] = np.finfo(dtype).max  # the largest finite values pass
        x[size // 3] = -np.finfo(dtype).max
        x[0] = np.finfo(dtype).smallest_subnormal
        check_finite("x", x)
        for at in {0, size // 2, size - 1}:
            y = x.copy()
            y[at] = bad
            with pytest.raises(BnncError, match=rf"holds NaN or Inf .*\[{at}\]"):
                check_finite("x", y)
            with pytest.raises(BnncError, match="holds NaN or Inf"):  # a strided view takes numpy's test
                check_finite("x", np.repeat(y, 2)[::2])


def test_exact_and_checked_inputs_give_the_same_outputs(tmp_path):
    """A C-contiguous float32 array of the compiled shape takes the fast path; a strided view,
    a float64 array (refused) and a NaN go through the full check; outputs match onnxruntime."""
    import bnnc
    from runtime import InferenceSession
    from tests.binary_mlp import binary_mlp
    from tests.helpers import ort_run, save

    model = binary_mlp()
    path = bnnc.compile_model(save(model, str(tmp_path)), str(tmp_path / "m.bnn")).path
    sess = InferenceSession(path, plan="emitted")
    rng = np.random.default_rng(3)
    wide = rng.standard_normal((2, 80)).astype(np.float32)
    x = np.ascontiguousarray(wide[:, ::2])
    expected = ort_run(model, {"x": x})[0]
    fast = sess.run(None, {"x": x})[0]
    strided = sess.run([sess.get_outputs()[0].name], {"x": wide[:, ::2]})[0]
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(strided, expected)
    again = sess.run(None, {"x": x})[0]
    assert again is not fast  # every run hands out its own arrays, not the workspace's
    np.testing.assert_array_equal(fast, again)
    with pytest.raises(BnncError, match="dtype float64"):
        sess.run(None, {"x": x.astype(np.float64)})
    with pytest.raises(BnncError, match="unknown output"):
        sess.run(["nope"], {"x": x})
    x[1, 3] = np.inf
    with pytest.raises(BnncError, match=r"holds NaN or Inf .*\[1, 3\]"):
        sess.run(None, {"x": x})
