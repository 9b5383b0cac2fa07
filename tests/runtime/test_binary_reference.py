"""The numpy references in bnnc/ops.py against onnxruntime, wherever an ONNX equivalent exists.

The kernels are tested against these references; this file ties the references to onnxruntime:
on {-1, 0, +1} values float convolutions and products are exact, so comparisons are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc import ops
from tests.helpers import assert_close, make_model, ort_run
from tests.runtime.test_binary_helpers import signs

# (N, Cin, H, W, Cout, kh, kw, strides, pads, dilations, group)
CONVS = [
    (1, 3, 5, 6, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (2, 65, 6, 5, 7, 3, 3, (2, 1), (0, 2, 1, 0), (1, 1), 1),
    (1, 64, 7, 7, 5, 5, 5, (1, 1), (2, 2, 2, 2), (2, 1), 1),
    (1, 6, 5, 5, 4, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 2),
    (1, 5, 6, 6, 10, 3, 3, (1, 1), (1, 0, 1, 2), (1, 1), 5),
]


def conv_model(st, pads, dil, g, pad_value=None):
    nodes, x = [], "x"
    if pad_value is not None:
        pad = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64)
        nodes.append(helper.make_node("Pad", ["x", "pads", "pv"], ["xp"], mode="constant"))
        x, pads = "xp", (0, 0, 0, 0)
    nodes.append(helper.make_node("Conv", [x, "w"], ["y"], strides=list(st), pads=list(pads),
                                  dilations=list(dil), group=g))
    inits = {"pads": pad, "pv": np.array(pad_value, np.float32)} if pad_value is not None else {}
    return nodes, inits


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_binary_conv_int_matches_onnx_conv(case, pad_value):
    n, cin, h, w, cout, kh, kw, st, pads, dil, g = CONVS[case]
    rng = np.random.default_rng(case)
    x = signs(rng, (n, cin, h, w), zeros=True)
    wv = signs(rng, (cout, cin // g, kh, kw), zeros=case % 2 == 1)
    nodes, inits = conv_model(st, pads, dil, g, None if pad_value == 0 else pad_value)
    inits["w"] = wv.astype(np.float32)
    (y,) = ort_run(make_model(nodes, [("x", list(x.shape))], [("y", None)], inits), {"x": x.astype(np.float32)})
    s = ops.binary_conv_int(x, wv, st, pads, dil, g, pad_value)
    np.testing.assert_array_equal(s, y.astype(np.int64))
    assert_close(y, s)


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130])
def test_binary_dense_int_matches_gemm(k):
    rng = np.random.default_rng(k)
    x, w = signs(rng, (3, k), zeros=True), signs(rng, (7, k), zeros=True)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    model = make_model([node], [("x", [3, k])], [("y", [3, 7])], {"w": w.astype(np.float32)})
    (y,) = ort_run(model, {"x": x.astype(np.float32)})
    np.testing.assert_array_equal(ops.binary_dense_int(x, w), y.astype(np.int64))


@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_dense_input_orders(order):
    """"chw" is ONNX Flatten of NCHW; "hwc" is Flatten of the NHWC transpose (Keras / tf2onnx)."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    nodes = [helper.make_node("Flatten", ["t" if order == "hwc" else "x"], ["y"])]
    if order == "hwc":
        nodes.insert(0, helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]))
    (y,) = ort_run(make_model(nodes, [("x", [2, 3, 4, 5])], [("y", [2, 60])]), {"x": x})
    np.testing.assert_array_equal(ops.dense_input(x, order), y)


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("case", [
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 3), (1, 0, 1, 1), (1, 1)),
    ((2, 2), (1, 1), (1, 1, 0, 0), (2, 2)),
    ((3, 3), (3, 3), (0, 0, 2, 2), (1, 1)),
])
def test_bit_maxpool_matches_maxpool(case, ceil_mode):
    k, st, pads, dil = case
    x = signs(np.random.default_rng(sum(k) + sum(st)), (1, 5, 6, 7), zeros=True)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(k), strides=list(st), pads=list(pads),
                            dilations=list(dil), ceil_mode=ceil_mode)
    (y,) = ort_run(make_model([node], [("x", list(x.shape))], [("y", None)]), {"x": x.astype(np.float32)})
    got = ops.bit_maxpool(x, k, st, pads, dil, ceil_mode)
    np.testing.assert_array_equal(got, y.astype(np.int8))
    assert got.shape[2:] == ops.pool_output_hw(6, 7, k, st, pads, dil, ceil_mode)
    # inverted channels take the min: -MaxPool(-x)
    (ymin,) = ort_run(make_model([node], [("x", list(x.shape))], [("y", None)]), {"x": -x.astype(np.float32)})
    invert = np.array([True, False, True, True, False])
    expect = np.where(invert.reshape(1, 5, 1, 1), -ymin, y).astype(np.int8)
    np.testing.assert_array_equal(ops.bit_maxpool(x, k, st, pads, dil, ceil_mode, invert), expect)


def test_binarize_zero_0_matches_sign():
    x = np.array([[-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0]], np.float32)
    (y,) = ort_run(make_model([helper.make_node("Sign", ["x"], ["y"])], [("x", [1, 6])], [("y", [1, 6])]), {"x": x})
    np.testing.assert_array_equal(ops.binarize(x, 0), y.astype(np.int8))
    np.testing.assert_array_equal(ops.binarize(x, 1), [[-1, 1, 1, 1, -1, 1]])
    np.testing.assert_array_equal(ops.binarize(x, -1), [[-1, -1, -1, 1, -1, 1]])


@pytest.mark.parametrize("case", range(len(CONVS)))
def test_binary_weight_conv_matches_conv(case):
    n, cin, h, w, cout, kh, kw, st, pads, dil, g = CONVS[case]
    rng = np.random.default_rng(case)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wv = signs(rng, (cout, cin // g, kh, kw), zeros=True)
    scale, bias = rng.uniform(0.5, 2, cout).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    nodes, inits = conv_model(st, pads, dil, g)
    nodes[-1].output[0] = "c"
    nodes += [helper.make_node("Mul", ["c", "scale"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    inits.update(w=wv.astype(np.float32), scale=scale.reshape(1, -1, 1, 1), bias=bias.reshape(1, -1, 1, 1))
    (y,) = ort_run(make_model(nodes, [("x", list(x.shape))], [("y", None)], inits), {"x": x})
    assert_close(ops.binary_weight_conv(x, wv, scale, bias, strides=st, pads=pads, dilations=dil, group=g), y, rel=1e-5)


def test_binary_weight_dense_matches_gemm():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 65)).astype(np.float32), signs(rng, (6, 65), zeros=True)
    scale, bias = rng.uniform(0.5, 2, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Mul", ["g", "scale"], ["m"]),
             helper.make_node("Add", ["m", "bias"], ["y"])]
    model = make_model(nodes, [("x", [2, 65])], [("y", [2, 6])], {"w": w.astype(np.float32), "scale": scale, "bias": bias})
    (y,) = ort_run(model, {"x": x})
    assert_close(ops.binary_weight_dense(x, w, scale, bias), y, rel=1e-5)


@pytest.mark.parametrize("act,attrs,params", [
    ("Relu", {}, []), ("LeakyRelu", {"alpha": 0.3}, [0.3]), ("LeakyRelu", {}, []), ("Clip", {}, [-0.5, 0.75]),
    ("Clip", {}, []), ("Sigmoid", {}, []), ("Tanh", {}, []), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [0.3, 0.4]),
    ("HardSigmoid", {}, []),
])
def test_float_activation_matches_onnxruntime(act, attrs, params):
    """The activation of a binary-weight layer, with the parameters the fusing pass writes (or
    none: the op's defaults)."""
    x = np.linspace(-12, 12, 97, dtype=np.float32).reshape(1, 97)
    inputs, inits = ["x"], {}
    if act == "Clip" and params:
        inputs, inits = ["x", "lo", "hi"], {"lo": np.array(params[0], np.float32), "hi": np.array(params[1], np.float32)}
    model = make_model([helper.make_node(act, inputs, ["y"], **attrs)], [("x", [1, 97])], [("y", [1, 97])], inits)
    (y,) = ort_run(model, {"x": x})
    assert_close(ops.float_activation(x, act, params), y, rel=1e-6)


def test_output_shapes():
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], cout=130, output="bits")
    assert ops.output_shapes("bnnc.BinaryConv", attrs, (1, 14, 14, 4), 2) == [((1, 7, 7, 3), "uint64")] * 2
    assert ops.output_shapes("BinaryConv", dict(attrs, output="float"), (1, 14, 14, 4)) == [((1, 130, 7, 7), "float32")]
    assert ops.output_shapes("Binarize", {}, (2, 65, 3, 3), 2) == [((2, 3, 3, 2), "uint64")] * 2
    assert ops.output_shapes("BinaryDense", dict(cout=10, output="float"), (1, 36)) == [((1, 10), "float32")]
    assert ops.packed_shape((2, 65)) == (2, 2)
