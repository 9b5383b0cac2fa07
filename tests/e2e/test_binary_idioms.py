"""Binary idioms end to end: every binarized tensor bit-exact against onnxruntime.

Each graph is built the way an exporter writes it, compiled with the default pipeline and run by
``bnnc.verify``, which compares every packed tensor with onnxruntime's sign of the same float
tensor. Weights are ±1 (or ±alpha with alpha a power of two), so onnxruntime's float arithmetic
is exact here and any differing bit is a bnnc bug, not a near tie.
"""

import json
import os
import tempfile

import numpy as np
import pytest
from onnx import helper

import bnnc
from bnnc.layers import LAYERS_KEY as KEY
from bnnc.verify import verify
from tests.bnn_graphs import Builder
from tests.helpers import save


def check(model, x, modes=None, samples_zero=False):
    with tempfile.TemporaryDirectory() as d:
        path = save(model, d)
        report = verify(path, {"x": x})
        res = bnnc.compile_model(path, os.path.join(d, "m.bnn"), input_shapes={"x": list(x.shape)})
    layers = json.loads(res.manifest["metadata"][KEY])
    assert report.layers, "no binarized tensor was compared"
    for lay in report.layers:
        assert lay.differing == 0, f"{lay.tensor}: {lay.differing} of {lay.bits} bits differ"
    for name, o in report.outputs.items():
        assert o["max_abs_error"] <= 1e-5 * max(1.0, o["limit"] / 1e-3), (name, o)
    if modes is not None:
        assert [r["mode"] for r in layers] == modes, [(r["name"], r["mode"], r["reason"]) for r in layers]
    return res, layers


def _x(shape, seed=1, zeros=0.0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if zeros:
        x[np.random.default_rng(seed + 1).random(shape) < zeros] = 0.0
    return x


@pytest.mark.parametrize("idiom", ["sign", "larq", "bitorch", "bipolar"])
def test_two_binary_convs_with_negative_batchnorm(idiom):
    b = Builder(0)
    s = b.sign(b.bn("x", 5, neg_frac=0.0), idiom)
    y = b.conv(s, b.pm1((7, 5, 3, 3)), pads=[1, 1, 1, 1])
    y = b.conv(b.sign(b.bn(y, 7, neg_frac=0.4), idiom), b.pm1((6, 7, 3, 3)), pads=[1, 1, 1, 1])
    res, _ = check(b.model([("x", [2, 5, 9, 9])], [(y, [2, 6, 9, 9])]), _x([2, 5, 9, 9]), ["xnor", "xnor"])
    assert "bnnc.BinaryConv" in res.manifest["plan"][-1]["op"]


@pytest.mark.parametrize("cin, cout, stride, dilation, group, pads", [
    (65, 3, 1, 1, 1, [1, 1, 1, 1]),
    (3, 130, 2, 1, 1, [0, 1, 2, 1]),
    (64, 63, 1, 2, 1, [2, 2, 2, 2]),
    (6, 4, 1, 1, 2, [1, 0, 1, 0]),
    (8, 8, 2, 1, 8, [1, 1, 1, 1]),
])
def test_conv_geometry_with_zero_padding_at_every_border(cin, cout, stride, dilation, group, pads):
    b = Builder(cin * 7 + cout)
    s = b.sign("x")
    y = b.conv(s, b.pm1((cout, cin // group, 3, 3)), pads=pads, strides=[stride, stride],
               dilations=[dilation, dilation], group=group)
    y = b.conv(b.sign(b.bn(y, cout)), b.pm1((5, cout, 2, 2)))
    check(b.model([("x", [1, cin, 10, 11])], [(y, None)]), _x([1, cin, 10, 11], zeros=0.2), ["xnor", "xnor"])


def test_ties_exactly_at_the_threshold_and_constant_channels():
    b = Builder(3)
    s = b.sign("x")
    y = b.conv(s, b.pm1((6, 4, 3, 3)), pads=[1, 1, 1, 1])
    # mean is an integer and beta 0, so BatchNorm gives exactly 0 at s == mean: Sign(0) = 0
    gamma = np.array([1.0, -1.0, 0.0, 2.0, -0.5, 0.0], np.float32)
    beta = np.array([0, 0, 0.5, 0, 0, -0.25], np.float32)
    mean = np.array([1, -3, 0, 0, 2, 5], np.float32)
    t = b.sign(b.bn(y, 6, gamma=gamma, beta=beta, mean=mean))
    z = b.conv(t, b.pm1((3, 6, 1, 1)))
    res, _ = check(b.model([("x", [2, 4, 6, 6])], [(z, None)]), _x([2, 4, 6, 6], zeros=0.1), ["xnor", "xnor"])
    first = next(s for s in res.manifest["plan"] if s["op"] == "bnnc.BinaryConv")
    assert first["attrs"]["output"] == "bits" and first["attrs"]["out_mask"] == 1


def test_non_monotone_prelu_chain():
    b = Builder(4)
    y = b.conv(b.sign("x"), b.pm1((8, 3, 3, 3)), pads=[1, 1, 1, 1])
    p = b.op("PRelu", [b.bn(y, 8), b.const(np.full((8, 1, 1), -0.5, np.float32))])
    z = b.conv(b.sign(b.op("Add", [p, b.const(np.float32(-0.7))]), "larq"), b.pm1((4, 8, 3, 3)))
    check(b.model([("x", [1, 3, 7, 7])], [(z, None)]), _x([1, 3, 7, 7]), ["xnor", "xnor"])


def test_maxpool_between_conv_and_negative_batchnorm_pools_the_bits():
    b = Builder(5)
    y = b.conv(b.sign("x", "larq"), b.pm1((10, 4, 3, 3)), pads=[1, 1, 1, 1])
    pooled = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    z = b.conv(b.sign(b.bn(pooled, 10, neg_frac=0.5), "larq"), b.pm1((3, 10, 3, 3)), pads=[1, 1, 1, 1])
    res, _ = check(b.model([("x", [2, 4, 8, 8])], [(z, None)]), _x([2, 4, 8, 8]), ["xnor", "xnor"])
    ops = [s["op"] for s in res.manifest["plan"]]
    assert "bnnc.BitMaxPool" in ops and "MaxPool" not in ops


def test_finn_multithreshold_binarizer():
    b = Builder(13)
    y = b.conv(b.sign("x", "bipolar"), b.pm1((6, 4, 3, 3)), pads=[1, 1, 1, 1])
    thr = b.const(b.rng.integers(-4, 5, (6, 1)).astype(np.float32) + 0.5, "thr")
    t = b.name("mt")
    b.nodes.append(helper.make_node("MultiThreshold", [y, thr], [t], domain="qonnx.custom_op.general",
                                    out_scale=2.0, out_bias=-1.0, name=t))
    z = b.conv(t, b.pm1((3, 6, 3, 3)))
    model = b.model([("x", [1, 4, 6, 6])], [(z, None)], extra_opsets={"qonnx.custom_op.general": 1})
    res, _ = check(model, _x([1, 4, 6, 6]), ["xnor", "xnor"])
    assert [s["attrs"]["output"] for s in res.manifest["plan"] if s["op"] == "bnnc.BinaryConv"] == ["bits", "float"]


def test_sign_then_maxpool_then_conv_brevitas_style():
    b = Builder(6)
    y = b.conv(b.sign("x", "bipolar"), b.pm1((9, 3, 3, 3)))
    s = b.op("MaxPool", [b.sign(b.bn(y, 9), "bipolar")], kernel_shape=[2, 2], strides=[2, 2])
    z = b.conv(s, b.pm1((4, 9, 3, 3)))
    res, _ = check(b.model([("x", [1, 3, 12, 12])], [(z, None)]), _x([1, 3, 12, 12]), ["xnor", "xnor"])
    assert "bnnc.BitMaxPool" in [s["op"] for s in res.manifest["plan"]]


@pytest.mark.parametrize("value", [-1.0, 1.0])
def test_explicit_pad_with_plus_minus_one_folds_into_the_conv(value):
    b = Builder(7)
    s = b.sign("x", "bitorch")
    p = b.op("Pad", [s, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), b.const(np.float32(value))])
    z = b.conv(p, b.pm1((5, 3, 3, 3)))
    res, _ = check(b.model([("x", [1, 3, 6, 6])], [(z, None)]), _x([1, 3, 6, 6]), ["xnor"])
    conv = next(s for s in res.manifest["plan"] if s["op"] == "bnnc.BinaryConv")
    assert conv["attrs"]["pad_value"] == int(value) and "Pad" not in [s["op"] for s in res.manifest["plan"]]


def test_nhwc_island_with_pad_one_from_tf2onnx():
    b = Builder(8)
    t = b.op("Transpose", [b.bn("x", 6)], perm=[0, 2, 3, 1])
    p = b.op("Pad", [b.sign(t, "larq"), b.const(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)), b.const(np.float32(1.0))])
    z = b.conv(b.op("Transpose", [p], perm=[0, 3, 1, 2]), b.pm1((4, 6, 3, 3)))
    res, _ = check(b.model([("x", [1, 6, 5, 5])], [(z, None)]), _x([1, 6, 5, 5]), ["xnor"])
    assert not {"Transpose", "Pad"} & {s["op"] for s in res.manifest["plan"]}


def test_binarizer_beside_a_gating_branch_behind_tf2onnx_transposes():
    """Real-to-Binary Net's gate reads the binarizer's input too (BatchNorm -> GlobalAveragePool
    -> Dense -> Sigmoid scaling the conv's output): the conv still runs XNOR."""
    b = Builder(9)
    t = b.op("Transpose", [b.bn("x", 8)], perm=[0, 2, 3, 1])
    s = b.op("Transpose", [b.sign(t, "larq")], perm=[0, 3, 1, 2])
    z = b.conv(s, b.pm1((8, 8, 3, 3)), pads=[1, 1, 1, 1])
    gate = b.op("Sigmoid", [b.dense(b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Transpose", [t], perm=[0, 3, 1, 2])])]),
                                    b.normal((8, 8), 8))])
    y = b.op("Mul", [z, b.op("Unsqueeze", [gate, b.const(np.array([2, 3], np.int64))])])
    check(b.model([("x", [1, 8, 6, 6])], [(y, None)]), _x([1, 8, 6, 6]), ["xnor", "float"])


@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_binary_dense_after_a_flatten(order):
    b = Builder(9)
    y = b.conv(b.sign("x"), b.pm1((70, 3, 3, 3)), pads=[1, 1, 1, 1])
    s = b.sign(b.bn(y, 70))
    if order == "hwc":
        s = b.op("Transpose", [s], perm=[0, 2, 3, 1])
    flat = b.op("Reshape", [s, b.const(np.array([2, -1], np.int64))])
    h = b.op("Gemm", [flat, b.const(b.pm1((33, 70 * 16))), b.const(np.zeros(33, np.float32))], transB=1)
    out = b.op("MatMul", [b.sign(b.bn(h, 33, rank=2)), b.const(b.pm1((10, 33)).T.copy())])
    res, _ = check(b.model([("x", [2, 3, 4, 4])], [(out, None)]), _x([2, 3, 4, 4]), ["xnor", "xnor", "xnor"])
    dense = [s for s in res.manifest["plan"] if s["op"] == "bnnc.BinaryDense"]
    assert dense[0]["attrs"]["in_order"] == order and dense[0]["attrs"]["output"] == "bits"


def test_ternary_weights_use_two_bitplanes():
    b = Builder(10)
    w = b.pm1((6, 5, 3, 3))
    w[b.rng.random(w.shape) < 0.3] = 0.0
    z = b.conv(b.sign(b.conv(b.sign("x"), w * 0.5, pads=[1, 1, 1, 1])), b.pm1((2, 6, 1, 1)))
    check(b.model([("x", [1, 5, 6, 6])], [(z, None)]), _x([1, 5, 6, 6]), ["ternary", "xnor"])


def test_binary_weight_first_layer_and_scaled_weights():
    b = Builder(11)
    alpha = 2.0 ** b.rng.integers(-3, 3, 8)
    y = b.conv("x", b.pm1((8, 3, 3, 3), alpha), bias=b.rng.normal(size=8), pads=[1, 1, 1, 1])
    s = b.op("Mul", [b.sign(b.bn(y, 8)), b.const(np.float32(0.5))])
    z = b.conv(s, b.pm1((4, 8, 3, 3), 2.0 ** b.rng.integers(-2, 2, 4)))
    check(b.model([("x", [1, 3, 6, 6])], [(z, None)]), _x([1, 3, 6, 6]), ["binary-weight", "xnor"])


def test_float_layer_says_why():
    b = Builder(12)
    y = b.conv(b.sign("x"), b.rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    with tempfile.TemporaryDirectory() as d:
        res = bnnc.compile_model(save(b.model([("x", [1, 3, 5, 5])], [(y, None)]), d), os.path.join(d, "m.bnn"))
    (layer,) = json.loads(res.manifest["metadata"][KEY])
    assert layer["mode"] == "float" and "not ±alpha" in layer["reason"]


@pytest.mark.parametrize("order", ["layer_first", "shortcut_first", "constant_first"])
def test_add_before_the_next_binarizer_with_the_layer_on_either_side(order):
    """Sign(Add(BN(conv), r)): a real shortcut r (not foldable into a threshold, so it stays a
    residual) or a per-channel constant (folded), with the layer's value on either side."""
    b = Builder(11)
    y = b.bn(b.conv(b.sign("x"), b.pm1((7, 7, 3, 3)), pads=[1, 1, 1, 1]), 7)
    other = "x" if order != "constant_first" else b.const(np.linspace(-1, 1, 7, dtype=np.float32).reshape(1, 7, 1, 1))
    z = b.op("Add", [y, other] if order == "layer_first" else [other, y])
    y2 = b.conv(b.sign(z), b.pm1((5, 7, 3, 3)), pads=[1, 1, 1, 1])
    check(b.model([("x", [2, 7, 6, 6])], [(y2, None)]), _x([2, 7, 6, 6], zeros=0.1), ["xnor", "xnor"])
