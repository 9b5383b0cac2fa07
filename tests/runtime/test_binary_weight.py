"""bnnc.BinaryWeightConv / bnnc.BinaryWeightDense kernels against the numpy reference (bnnc.ops)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnnc
from bnnc import ops
from runtime import InferenceSession
from runtime.bitpack import pack_dense
from runtime.errors import BnncError
from tests.helpers import assert_close, ort_run
from tests.runtime.test_binary_helpers import run_step, signs
from tests.runtime.test_float_helpers import build, compare

# name: (N, Cin, H, W, Cout, kh, kw, strides, pads, dilations, group)
CASES = {
    "1x1_plain": (2, 65, 4, 5, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_stride2": (1, 3, 5, 5, 4, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "3x3_pad1": (1, 63, 6, 7, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "5x5_s2_asym": (2, 3, 9, 8, 5, 5, 5, (2, 1), (2, 0, 1, 2), (1, 1), 1),
    "3x3_dilation2": (1, 4, 8, 8, 6, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "group2_gemm": (1, 130, 5, 5, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "group2_direct": (1, 6, 5, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise": (2, 5, 6, 6, 5, 3, 3, (2, 2), (1, 0, 1, 1), (1, 1), 5),
}


# fused activations: (activation, activation_params) as fuse-activation-into-float-layer writes them
ACTS = [("", []), ("Relu", []), ("LeakyRelu", [0.3]), ("Clip", [-0.5, 0.75]), ("Sigmoid", []), ("Tanh", []),
        ("HardSigmoid", [0.3, 0.4])]


def _tolerance(pre: np.ndarray) -> float:
    """1e-5 of the largest value before the activation: a squashing activation keeps the float32
    sum's rounding, not its magnitude."""
    return 1e-5 * max(1.0, float(np.max(np.abs(pre))))


def _act_attrs(act: str, params: list) -> dict:
    return dict(activation=act, activation_params=params) if act else {}


@pytest.mark.parametrize("ternary", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_binary_weight_conv(case, ternary):
    n, cin, h, w, cout, kh, kw, st, pads, dil, g = CASES[case]
    rng = np.random.default_rng(cin * 10 + cout)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wv = signs(rng, (cout, cin // g, kh, kw), zeros=ternary)
    scale = rng.uniform(0.1, 2, cout).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    wb, wm = pack_dense(wv, with_mask=ternary)
    attrs = dict(kernel_shape=[kh, kw], strides=list(st), pads=list(pads), dilations=list(dil), group=g,
                 cin=cin, cout=cout)
    (y,) = run_step("bnnc.BinaryWeightConv", attrs, [x, wb, wm, scale, bias], {1, 2, 3, 4})
    expect = ops.binary_weight_conv(x, wv, scale, bias, strides=st, pads=pads, dilations=dil, group=g)
    assert_close(y, expect, rel=1e-5)


@pytest.mark.parametrize("act,params", ACTS)
@pytest.mark.parametrize("case", ["3x3_pad1", "5x5_s2_asym", "group2_direct", "depthwise"])
def test_binary_weight_conv_activation(case, act, params):
    """The fused activation on every conv path (tiles, GEMM, direct, tiny)."""
    n, cin, h, w, cout, kh, kw, st, pads, dil, g = CASES[case]
    rng = np.random.default_rng(cin + cout)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wv = signs(rng, (cout, cin // g, kh, kw))
    scale = rng.uniform(0.1, 2, cout).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    wb, _ = pack_dense(wv)
    attrs = dict(kernel_shape=[kh, kw], strides=list(st), pads=list(pads), dilations=list(dil), group=g,
                 cin=cin, cout=cout, **_act_attrs(act, params))
    (y,) = run_step("bnnc.BinaryWeightConv", attrs, [x, wb, None, scale, bias], {1, 3, 4})
    geo = dict(strides=st, pads=pads, dilations=dil, group=g)
    expect = ops.binary_weight_conv(x, wv, scale, bias, **geo, activation=act, activation_params=params)
    assert_close(y, expect, rel=_tolerance(ops.binary_weight_conv(x, wv, scale, bias, **geo)))


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
@pytest.mark.parametrize("ternary", [False, True])
def test_binary_weight_dense(k, ternary):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, k)).astype(np.float32)
    wv = signs(rng, (9, k), zeros=ternary)
    scale = rng.uniform(0.1, 2, 9).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    wb, wm = pack_dense(wv, with_mask=ternary)
    (y,) = run_step("bnnc.BinaryWeightDense", dict(cout=9, k=k), [x, wb, wm, scale, bias], {1, 2, 3, 4})
    assert_close(y, ops.binary_weight_dense(x, wv, scale, bias), rel=1e-5)


@pytest.mark.parametrize("act,params", ACTS)
@pytest.mark.parametrize("rows", [1, 8])  # BLAS, and the register tiles
def test_binary_weight_dense_activation(rows, act, params):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 300)).astype(np.float32)
    wv = signs(rng, (37, 300))
    scale = rng.uniform(0.01, 0.1, 37).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    wb, _ = pack_dense(wv)
    (y,) = run_step("bnnc.BinaryWeightDense", dict(cout=37, k=300, **_act_attrs(act, params)),
                    [x, wb, None, scale, bias], {1, 3, 4})
    expect = ops.binary_weight_dense(x, wv, scale, bias, activation=act, activation_params=params)
    assert_close(y, expect, rel=_tolerance(ops.binary_weight_dense(x, wv, scale, bias)))


def test_errors():
    x = np.zeros((1, 4), np.float32)
    wb, _ = pack_dense(np.ones((2, 4)))
    one = np.ones(2, np.float32)
    with pytest.raises(BnncError, match="X must be"):
        run_step("bnnc.BinaryWeightDense", dict(cout=2, k=5), [x, wb, None, one, one], {1, 3, 4},
                 out_specs=[((1, 2), "float32")])
    with pytest.raises(BnncError, match="constant"):
        run_step("bnnc.BinaryWeightDense", dict(cout=2, k=4), [x, wb, None, one, one], {3, 4})


@pytest.mark.parametrize("threads", [1, 2])
def test_binary_weight_layers_run_in_the_emitted_plan(threads, tmp_path):
    """A binary-weight network (real activations, +-alpha weights) compiled by the default
    pipeline: its BinaryWeightConv and BinaryWeightDense run inside the plan function and match
    onnxruntime on the float graph."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 9, 8)).astype(np.float32)
    w = (signs(rng, (6, 5, 3, 3)) * rng.uniform(0.1, 1, (6, 1, 1, 1))).astype(np.float32)
    g = (signs(rng, (4, 6 * 9 * 8)) * rng.uniform(0.1, 1, (4, 1))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    inits = {"w": w, "b": rng.standard_normal(6).astype(np.float32), "g": g,
             "gb": rng.standard_normal(4).astype(np.float32)}
    model = build(nodes, {"x": x}, inits)
    onnx.save(model, tmp_path / "m.onnx")
    art = bnnc.compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "m.bnn")).path
    sess = InferenceSession(art, threads=threads, plan="emitted")
    ops = {s["op"] for s in sess.manifest["plan"]}
    assert {"bnnc.BinaryWeightConv", "bnnc.BinaryWeightDense"} <= ops
    assert sess._plan is not None
    compare(sess.run(None, {"x": x}), ort_run(model, {"x": x}))
