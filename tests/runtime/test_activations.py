"""The fused activations (runtime/kernels/nn.py) applied in place equal the same activations
written to another array, bit for bit, on awkward values (NaN, signed zeros, infinities,
subnormals): the in-place loops are written apart so that they vectorize, and must not change a
result for it. Relu, LeakyRelu and Clip are also checked against numpy's formula."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from runtime.kernels.nn import ACTIVATIONS, act_inplace, act_rows
from tests.helpers import make_model, ort_run

SPECIAL = [np.nan, -np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-39, -1e-39, 3.0, -3.0, 0.5, -0.5]


def _values(dtype) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal(1000).astype(dtype)
    x[:len(SPECIAL)] = np.array(SPECIAL, dtype)
    return x


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,a0,a1", [(1, 0.0, 0.0), (2, 0.01, 0.0), (2, -0.5, 0.0), (3, -0.5, 0.7),
                                        (3, -np.inf, np.inf), (4, 0.0, 0.0), (5, 0.0, 0.0), (6, 0.2, 0.5)])
def test_in_place_equals_out_of_place(kind, a0, a1, dtype):
    x = _values(dtype)
    out = np.full_like(x, 7.0)
    act_rows(x, out, kind, a0, a1)
    y = x.copy()
    act_inplace(y, kind, a0, a1)
    np.testing.assert_array_equal(_bits(y), _bits(out))
    z = x.copy()
    act_rows(z, z, kind, a0, a1)  # the same buffer twice takes the in-place loops
    np.testing.assert_array_equal(_bits(z), _bits(out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_leaky_clip_formulas(dtype):
    x = _values(dtype)
    zero = dtype(0.0)
    want = {1: (np.where(x > 0, x, zero), 0.0, 0.0),
            2: (np.where(x >= 0, x, (x.astype(np.float64) * -0.5).astype(dtype)), -0.5, 0.0),
            3: (np.where(x < dtype(-0.5), dtype(-0.5), np.where(x > dtype(0.7), dtype(0.7), x)), -0.5, 0.7)}
    for kind, (expect, a0, a1) in want.items():
        y = x.copy()
        act_inplace(y, kind, a0, a1)
        np.testing.assert_array_equal(_bits(y), _bits(expect.astype(dtype)), err_msg=f"kind {kind}")


def test_every_activation_kind_is_covered():
    assert {k for k, _ in ACTIVATIONS.values()} - {0} == {1, 2, 3, 4, 5, 6}


@pytest.mark.parametrize("op,kind", [("Tanh", 5), ("Sigmoid", 4)])
def test_tanh_and_sigmoid_follow_onnxruntime_to_the_last_bit(op, kind):
    """float32 Tanh and Sigmoid are onnxruntime's rational approximations in fused multiply-adds:
    within 2^-23 of its results (the same bits nearly everywhere); computed in separate multiplies
    and adds, Tanh was 3 units of the last place off."""
    x = (np.random.default_rng(5).standard_normal(20000) * 5).astype(np.float32)
    x[:len(SPECIAL) - 2] = np.array(SPECIAL[2:], np.float32)  # no NaN: onnxruntime's clamp drops it
    want = ort_run(make_model([helper.make_node(op, ["x"], ["y"])], [("x", [x.size], TensorProto.FLOAT)],
                              [("y", [x.size], TensorProto.FLOAT)]), {"x": x})[0]
    y = x.copy()
    act_inplace(y, kind, 0.0, 0.0)
    np.testing.assert_allclose(y, want, rtol=0, atol=2.0 ** -23)
