"""The activations of runtime/kernels/activations.py (Elu ... Shrink, IsNaN, IsInf), ArgMax/ArgMin
and Instance/LayerNormalization against onnxruntime, at every opset that defines them, with
every attribute variant, at awkward shapes (odd sizes, rank 2 to 5, one large enough for the
parallel kernels) and with NaN, +-inf and -0.0 in the inputs. Last, a small BNN using several of
them through the whole compiler (``bnnc.compile``) and ``runtime.InferenceSession``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from onnx import helper

import bnnc
from runtime import InferenceSession
from runtime.errors import BnncError
from tests.bnn_graphs import Builder
from tests.helpers import assert_close, bnnc_run, ort_run, save
from tests.runtime.test_float_helpers import build, check, compare, randn, rng

REL = 1e-5  # of the largest expected magnitude (at least 1)
SHAPES = [(7, 13), (2, 3, 5, 7), (1, 1, 1, 1), (2, 8, 65, 67)]  # the last one runs in parallel


def _specials(shape, salt: int = 0, scale: float = 3.0) -> np.ndarray:
    """Random values with NaN, +-inf, +-0, tiny and large values planted at the front."""
    x = randn(*shape, salt=salt) * scale
    planted = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0, 0.5, -0.5, 1.0, -1.0]
    flat = x.reshape(-1)
    flat[:len(planted)] = planted[:flat.size]
    return x


def _ties(shape, salt: int = 0) -> np.ndarray:
    """Small integers (many ties) as float32."""
    return np.round(randn(*shape, salt=salt) * 1.5)


# -- activations ------------------------------------------------------------------------------
ACTIVATIONS = [
    ("Elu", 7, {}),
    ("Elu", 7, {"alpha": 0.3}),
    ("Elu", 22, {"alpha": 2.5}),
    ("Selu", 7, {}),
    ("Selu", 22, {"alpha": 2.0, "gamma": 0.5}),
    ("Celu", 12, {}),
    ("Celu", 12, {"alpha": 0.4}),
    ("Celu", 12, {"alpha": 3.0}),
    ("HardSwish", 14, {}),
    ("HardSwish", 22, {}),
    ("ThresholdedRelu", 10, {}),
    ("ThresholdedRelu", 22, {"alpha": -0.5}),
    ("ThresholdedRelu", 22, {"alpha": 0.0}),
    ("Softsign", 7, {}),
    ("Softsign", 22, {}),
    ("Mish", 18, {}),
    ("Mish", 22, {}),
    ("Gelu", 20, {}),
    ("Gelu", 20, {"approximate": "none"}),
    ("Gelu", 20, {"approximate": "tanh"}),
    ("Shrink", 9, {}),
    ("Shrink", 9, {"bias": 1.5, "lambd": 1.0}),
    ("Shrink", 9, {"bias": -0.25, "lambd": 0.0}),
]


def _id(case) -> str:
    op, opset, attrs = case
    return f"{op}-{opset}-" + ",".join(f"{k}={v}" for k, v in attrs.items())


@pytest.mark.parametrize("case", ACTIVATIONS, ids=_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activation(case, shape):
    op, opset, attrs = case
    check(helper.make_node(op, ["x"], ["y"], **attrs), {"x": _specials(shape)}, opset=opset, rel=REL)


@pytest.mark.parametrize("case", ACTIVATIONS[:1] + ACTIVATIONS[3:4] + ACTIVATIONS[8:], ids=_id)
def test_activation_float64(case):
    """float64 in bnnc against float32 in onnxruntime (which has no double kernel for most of
    these): bnnc's float64 result rounded to float32 agrees to float32 rounding."""
    op, opset, attrs = case
    x = _specials((5, 37), salt=1)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    expected = ort_run(build([node], {"x": x}, opset=opset), {"x": x})
    actual = bnnc_run(build([node], {"x": x.astype(np.float64)}, opset=opset), {"x": x.astype(np.float64)}, passes=[])
    assert actual[0].dtype == np.float64
    compare([actual[0].astype(np.float32)], expected, REL)


def test_activation_extremes():
    """Large arguments where the exp-based rewrites of Mish and tanh-Gelu could overflow."""
    x = np.array([-1e4, -300, -90, -45, -20, -12, -1e-3, 1e-3, 12, 20, 21, 45, 90, 300, 1e4, 3e38], np.float32)
    for op, opset, attrs in ACTIVATIONS:
        check(helper.make_node(op, ["x"], ["y"], **attrs), {"x": x}, opset=opset, rel=REL)


@pytest.mark.parametrize("opset", [9, 13, 20])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_isnan(opset, shape):
    y = check(helper.make_node("IsNaN", ["x"], ["y"]), {"x": _specials(shape)}, opset=opset)[0]
    assert y.dtype == np.bool_ and (y.sum() == 1 or y.size == 1)


@pytest.mark.parametrize("opset", [10, 20])
@pytest.mark.parametrize("detect", [{}, {"detect_negative": 0}, {"detect_positive": 0},
                                    {"detect_negative": 0, "detect_positive": 0}, {"detect_negative": 1}], ids=str)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_isinf(opset, detect, shape):
    check(helper.make_node("IsInf", ["x"], ["y"], **detect), {"x": _specials(shape)}, opset=opset)


@pytest.mark.parametrize("op", ["IsNaN", "IsInf", "Shrink"])
def test_predicates_float64(op):
    """onnxruntime has double kernels for these, so float64 is compared directly."""
    opset = 9 if op == "Shrink" else 20
    check(helper.make_node(op, ["x"], ["y"]), {"x": _specials((4, 9)).astype(np.float64)}, opset=opset, rel=REL)


def test_gelu_rejects_unknown_approximation():
    model = build([helper.make_node("Gelu", ["x"], ["y"], approximate="erf")], {"x": randn(2, 3)}, opset=20)
    with pytest.raises(BnncError, match="approximate must be 'none' or 'tanh'"):
        bnnc_run(model, {"x": randn(2, 3)}, passes=[])


def test_celu_rejects_zero_alpha():
    model = build([helper.make_node("Celu", ["x"], ["y"], alpha=0.0)], {"x": randn(2, 3)}, opset=12)
    with pytest.raises(BnncError, match="alpha must be nonzero"):
        bnnc_run(model, {"x": randn(2, 3)}, passes=[])


# -- ArgMax / ArgMin --------------------------------------------------------------------------
ARG_INPUTS = {
    "float32": lambda shape: _ties(shape),
    "float32-specials": lambda shape: _specials(shape, salt=2),
    "int64": lambda shape: rng(3).integers(-3, 4, shape).astype(np.int64),
    "int32": lambda shape: rng(4).integers(-2**31, 2**31 - 1, shape, dtype=np.int64).astype(np.int32),
    "uint8": lambda shape: rng(5).integers(0, 3, shape).astype(np.uint8),
    "int8": lambda shape: rng(6).integers(-128, 128, shape).astype(np.int8),
}


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("kind", list(ARG_INPUTS))
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extreme(op, kind, keepdims, last):
    """Every axis (negative ones too) of a rank-2 and a rank-4 input full of ties."""
    for shape in [(7, 13), (3, 5, 2, 9)]:
        x = ARG_INPUTS[kind](shape)
        for axis in range(-len(shape), len(shape)):
            node = helper.make_node(op, ["x"], ["y"], axis=axis, keepdims=keepdims, select_last_index=last)
            check(node, {"x": x}, opset=13)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("opset", [7, 11, 12, 13])
def test_arg_extreme_opsets_and_defaults(op, opset):
    """No attributes (axis 0, keepdims 1), and a positive axis with keepdims=0, at each opset;
    ArgMax-1 (opset 7) allows no negative axis and has no select_last_index."""
    x = _ties((6, 1, 5, 3), salt=7)
    check(helper.make_node(op, ["x"], ["y"]), {"x": x}, opset=opset)
    check(helper.make_node(op, ["x"], ["y"], axis=2, keepdims=0), {"x": x}, opset=opset)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, 3])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_extreme_large(op, axis, last):
    """Enough work for the parallel kernel; columns span several blocks of the column scan."""
    x = _ties((2, 37, 33, 29), salt=8)
    y = check(helper.make_node(op, ["x"], ["y"], axis=axis, select_last_index=last), {"x": x}, opset=13)[0]
    assert y.dtype == np.int64


def test_arg_extreme_float64_and_signed_zero():
    """-0.0 == 0.0 is a tie; NaN first in a row wins (onnxruntime's scan)."""
    x = np.array([[0.0, -0.0, 0.0, -1.0], [-0.0, 0.0, -0.0, -2.0], [np.nan, 1.0, 5.0, 5.0], [1.0, np.nan, 3.0, 3.0]])
    for op in ("ArgMax", "ArgMin"):
        for last in (0, 1):
            for dtype in (np.float32, np.float64):
                node = helper.make_node(op, ["x"], ["y"], axis=1, select_last_index=last)
                check(node, {"x": x.astype(dtype)}, opset=13)


# -- InstanceNormalization --------------------------------------------------------------------
@pytest.mark.parametrize("opset", [7, 22])
@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 5, 3, 3), (2, 4, 5, 6, 3), (2, 13, 51, 53)], ids=str)
@pytest.mark.parametrize("eps", [None, 0.3])
def test_instance_norm(opset, shape, eps):
    attrs = {} if eps is None else {"epsilon": eps}
    c = shape[1]
    x = randn(*shape) * 3 + 1
    inits = {"s": randn(c, salt=1), "b": randn(c, salt=2)}
    check(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], **attrs), {"x": x}, inits, opset=opset, rel=REL)


def test_instance_norm_runtime_scale_and_bias():
    feeds = {"x": randn(2, 3, 4, 5) * 2 - 1, "s": randn(3, salt=1), "b": randn(3, salt=2)}
    check(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]), feeds, rel=REL)


def test_instance_norm_one_pixel():
    """One element per plane: the variance is 0 and y = B. onnxruntime computes y as
    x * a + (B - mean * a) with a = scale / sqrt(eps) ~ 316 * scale, which cancels to ~1e-5 of
    B; bnnc forms (x - mean) first and gives B exactly, hence the looser tolerance."""
    x = randn(3, 2, 1, 1) * 3
    inits = {"s": randn(2, salt=1), "b": randn(2, salt=2)}
    y = check(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]), {"x": x}, inits, rel=1e-4)[0]
    np.testing.assert_array_equal(y[:, :, 0, 0], np.broadcast_to(inits["b"], (3, 2)))


def test_instance_norm_nan_and_inf_stay_in_their_plane():
    x = randn(2, 3, 4, 5)
    x[0, 1, 2, 3] = np.inf
    x[1, 2, 0, 0] = np.nan
    x[1, 0, 1, 1] = -0.0
    inits = {"s": randn(3, salt=1), "b": randn(3, salt=2)}
    y = check(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]), {"x": x}, inits, rel=REL)[0]
    assert np.isnan(y[0, 1]).all() and np.isnan(y[1, 2]).all() and np.isfinite(y).sum() == y.size - 40


# -- LayerNormalization -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 7), (2, 3, 5, 7), (2, 8, 65, 67)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_every_axis(shape, bias):
    x = randn(*shape) * 2 + 0.5
    for axis in range(-len(shape), len(shape)):
        pshape = shape[axis:]
        inits = {"s": randn(*pshape, salt=1), "b": randn(*pshape, salt=2)}
        ins = ["x", "s", "b"] if bias else ["x", "s"]
        inits = inits if bias else {"s": inits["s"]}
        check(helper.make_node("LayerNormalization", ins, ["y"], axis=axis), {"x": x}, inits, rel=REL)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.5])
def test_layer_norm_epsilon_and_default_axis(eps):
    x = randn(3, 4, 11) * 0.05  # small spread: epsilon matters
    inits = {"s": randn(11, salt=1), "b": randn(11, salt=2)}
    check(helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], epsilon=eps), {"x": x}, inits, rel=REL)


def test_layer_norm_broadcast_scale_and_runtime_inputs():
    x = randn(2, 3, 5, 7)
    # a scale of shape [1, 7] broadcast over the normalized block [5, 7]
    check(helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-2), {"x": x}, {"s": randn(1, 7, salt=1)},
          rel=REL)
    feeds = {"x": x, "s": randn(5, 7, salt=1), "b": randn(5, 7, salt=2)}
    check(helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=2), feeds, rel=REL)


def test_layer_norm_float64_and_nan_rows():
    x = randn(4, 6, 9).astype(np.float64)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = -np.inf
    x[3, 1, 1] = -0.0
    inits = {"s": randn(9, salt=1).astype(np.float64), "b": randn(9, salt=2).astype(np.float64)}
    y = check(helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"]), {"x": x}, inits, rel=REL)[0]
    assert np.isnan(y[1, 2]).all() and np.isnan(y[2, 0]).all() and np.isfinite(y).sum() == y.size - 18


def test_layer_norm_with_unused_optional_outputs_named_blank():
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y", "", ""])
    x = randn(2, 5)
    model = build([node], {"x": x}, {"s": randn(5, salt=1)})
    assert_close(bnnc_run(model, {"x": x}, passes=[])[0], ort_run(model, {"x": x})[0], rel=REL)


@pytest.mark.parametrize("outputs", [["y", "mean"], ["y", "mean", "inv_std"], ["y", "", "inv_std"]])
def test_layer_norm_rejects_training_outputs(outputs):
    node = helper.make_node("LayerNormalization", ["x", "s"], outputs)
    model = build([node], {"x": randn(2, 5)}, {"s": randn(5, salt=1)})
    with pytest.raises(BnncError, match="only the output Y is supported"):
        bnnc_run(model, {"x": randn(2, 5)}, passes=[])


# -- the whole compiler -----------------------------------------------------------------------
def _small_bnn():
    """Sign -> binary conv (+-1 weights) -> InstanceNorm -> Mish -> HardSwish -> pool -> Gemm ->
    LayerNorm -> Gelu (tanh) -> Elu, with the logits and their ArgMax as outputs."""
    b = Builder(5)
    h = b.conv(b.sign("x"), b.pm1((6, 4, 3, 3)), pads=[1, 1, 1, 1])
    c = (b.rng.uniform(0.5, 1.5, 6).astype(np.float32), b.rng.normal(0, 0.3, 6).astype(np.float32))
    h = b.op("InstanceNormalization", [h, b.const(c[0]), b.const(c[1])])
    h = b.op("HardSwish", [b.op("Mish", [h])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [h])])
    w = (b.rng.standard_normal((10, 6)) / 2).astype(np.float32)
    h = b.op("Gemm", [h, b.const(w), b.const(np.zeros(10, np.float32))], transB=1)
    h = b.op("LayerNormalization", [h, b.const(np.linspace(0.5, 1.5, 10, dtype=np.float32))], axis=-1)
    logits = b.op("Elu", [b.op("Gelu", [h], approximate="tanh")], alpha=0.5)
    top = b.op("ArgMax", [logits], axis=1, keepdims=0)
    return b.model([("x", [3, 4, 9, 11])], [(logits, [3, 10]), (top, [3], 7)], opset=20)


def test_compile_small_bnn_with_new_ops():
    model = _small_bnn()
    x = randn(3, 4, 9, 11, salt=9)
    expected = ort_run(model, {"x": x})
    with tempfile.TemporaryDirectory() as d:
        out = bnnc.compile(save(model, d), os.path.join(d, "small.bnn"))
        sess = InferenceSession(out)
        ops = {s["op"] for s in sess.manifest["plan"]}
        actual = sess.run(None, {"x": x})
    assert "bnnc.BinaryConv" in ops, ops  # the passes did binarize the conv
    assert {"InstanceNormalization", "Mish", "HardSwish", "LayerNormalization", "Gelu", "Elu", "ArgMax"} <= ops, ops
    assert_close(actual[0], expected[0], REL)
    np.testing.assert_array_equal(actual[1], expected[1])
