"""Float pooling, BatchNormalization and activation kernels against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.runtime.test_float_helpers import check, check_lowered, randn

# (input shape, attributes). Ceil-mode cases are chosen so that no window starts past the end of
# the input: there ONNX shape inference keeps a window onnxruntime drops (see the report).
POOLS = {
    "2x2_s2": ((2, 5, 8, 10), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "3x3_s2_pad1": ((1, 3, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "3x3_asym_pads_ceil": ((1, 3, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 1], ceil_mode=1)),
    "2x2_ceil_odd": ((1, 2, 9, 11), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "3x2_s1x2": ((1, 4, 7, 9), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[0, 1, 2, 0])),
    "dilated": ((1, 3, 11, 10), dict(kernel_shape=[3, 3], strides=[1, 2], dilations=[2, 2], pads=[1, 1, 1, 1])),
    "same_upper": ((1, 3, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 3, 9, 10), dict(kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_LOWER")),
    "1d": ((2, 3, 13), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
    "global_size": ((1, 3, 5, 5), dict(kernel_shape=[5, 5])),
}


@pytest.mark.parametrize("case", list(POOLS))
def test_maxpool(case):
    shape, attrs = POOLS[case]
    x = randn(*shape)
    x.reshape(-1)[::7] = -100.0  # windows whose maximum is not their first element
    check(helper.make_node("MaxPool", ["x"], ["y"], **attrs), {"x": x}, opset=12 if "dilations" in attrs else 17)


@pytest.mark.parametrize("case", [c for c in POOLS if "dilations" not in POOLS[c][1]])
@pytest.mark.parametrize("include_pad", [0, 1])
def test_averagepool(case, include_pad):
    shape, attrs = POOLS[case]
    node = helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=include_pad, **attrs)
    check(node, {"x": randn(*shape)})


@pytest.mark.parametrize("include_pad", [0, 1])
def test_averagepool_dilated_opset19(include_pad):
    attrs = POOLS["dilated"][1]
    node = helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=include_pad, **attrs)
    check(node, {"x": randn(1, 3, 11, 10)}, opset=19)


def test_maxpool_int8():
    x = np.random.default_rng(3).integers(-128, 127, size=(1, 3, 6, 6), dtype=np.int8)
    check(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), {"x": x})


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (1, 4, 11)])
def test_global_pool(op, shape):
    check(helper.make_node(op, ["x"], ["y"]), {"x": randn(*shape) + 3.0})


@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 6), (2, 3, 7)])
def test_batchnorm(shape):
    c = shape[1]
    inits = {
        "s": randn(c, salt=1), "b": randn(c, salt=2), "m": randn(c, salt=3),
        "v": np.abs(randn(c, salt=4)) + 0.1,
    }
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)
    check(node, {"x": randn(*shape)}, inits)


def test_batchnorm_runtime_statistics():
    c = 4
    feeds = {"x": randn(2, c, 3, 3), "s": randn(c, salt=1), "b": randn(c, salt=2), "m": randn(c, salt=3),
             "v": np.abs(randn(c, salt=4)) + 0.1}
    check(helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"]), feeds)


ACTIVATIONS = [
    ("Relu", {}),
    ("LeakyRelu", {}),
    ("LeakyRelu", dict(alpha=-1.5)),
    ("Sigmoid", {}),
    ("Tanh", {}),
    ("HardSigmoid", {}),
    ("HardSigmoid", dict(alpha=0.5, beta=0.25)),
]


@pytest.mark.parametrize("op,attrs", ACTIVATIONS)
def test_activation(op, attrs):
    x = randn(3, 5, 1, 7)
    x.reshape(-1)[:6] = [0.0, -0.0, 0.002, -0.002, 1e-7, -1e-7]
    check(helper.make_node(op, ["x"], ["y"], **attrs), {"x": x}, rel=1e-5)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "HardSigmoid"])
def test_activation_saturation(op):
    x = np.array([-100.0, -20.0, -5.0, 5.0, 20.0, 100.0], np.float32)
    check(helper.make_node(op, ["x"], ["y"]), {"x": x}, rel=1e-6)


def test_activation_large_tensor():
    """More than one parallel chunk of the flat kernel."""
    check(helper.make_node("Sigmoid", ["x"], ["y"]), {"x": randn(3, 7, 41, 53) * 10})


@pytest.mark.parametrize("bounds", [(-0.5, 0.75), (None, 0.1), (-0.2, None), (None, None)])
def test_clip_inputs(bounds):
    ins, inits = ["x"], {}
    for name, v in zip(("lo", "hi"), bounds, strict=True):
        ins.append("" if v is None else name)
        if v is not None:
            inits[name] = np.float32(v)
    while ins[-1] == "":
        ins.pop()
    check(helper.make_node("Clip", ins, ["y"]), {"x": randn(4, 9)}, inits)


def test_clip_runtime_bounds():
    feeds = {"x": randn(4, 9), "lo": np.array(-0.3, np.float32), "hi": np.array(0.4, np.float32)}
    check(helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), feeds)


def test_clip_attributes_opset6():
    """Opset 6 gives min/max as attributes (the loader converts such models; the kernel reads both)."""
    check_lowered(helper.make_node("Clip", ["x"], ["y"], min=-0.25, max=0.5), {"x": randn(3, 8)}, opset=6)


def test_clip_int():
    x = np.arange(-10, 10, dtype=np.int64).reshape(4, 5)
    check(helper.make_node("Clip", ["x", "lo", "hi"], ["y"]), {"x": x}, {"lo": np.int64(-3), "hi": np.int64(4)})


@pytest.mark.parametrize("slope_shape", [(1,), (5, 1, 1), (1, 5, 1, 1), (7,), (4, 1)])
def test_prelu(slope_shape):
    slope = randn(*slope_shape, salt=5)
    check(helper.make_node("PRelu", ["x", "s"], ["y"]), {"x": randn(2, 5, 4, 7)}, {"s": slope})


def test_prelu_runtime_slope():
    check(helper.make_node("PRelu", ["x", "s"], ["y"]), {"x": randn(2, 5, 3), "s": randn(5, 1, salt=1)})


@pytest.mark.parametrize("threads", [1, 2])
def test_pools_as_literal_plan_loops(threads, tmp_path):
    """Every pool above (MaxPool, AveragePool with and without count_include_pad, an int8 max)
    in one emitted plan, where they are literal loops (runtime/kernels/pool_emit.py), against
    onnxruntime, on one thread and two (where the large pools' loops are split over the threads
    in a parallel function of the plan module, each task with its own row of maxima)."""
    import onnx

    import bnnc
    from bnnc.builder import make_model
    from runtime import InferenceSession
    from tests.helpers import ort_run, save
    from tests.runtime.test_float_helpers import compare

    nodes, feeds, outputs = [], {}, []
    for i, (shape, attrs) in enumerate(POOLS.values()):
        feeds[f"x{i}"] = x = randn(*shape, salt=i)
        x.reshape(-1)[::7] = -100.0
        nodes.append(helper.make_node("MaxPool", [f"x{i}"], [f"max{i}"], **attrs))
        for pad in (0, 1):
            nodes.append(helper.make_node("AveragePool", [f"x{i}"], [f"avg{i}_{pad}"], count_include_pad=pad, **attrs))
        outputs += [f"max{i}", f"avg{i}_0", f"avg{i}_1"]
    feeds["q"] = np.random.default_rng(3).integers(-128, 127, size=(1, 3, 6, 6), dtype=np.int8)
    feeds["big"] = randn(1, 16, 64, 64)
    nodes.append(helper.make_node("MaxPool", ["q"], ["qmax"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("MaxPool", ["big"], ["bigmax"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("AveragePool", ["big"], ["bigavg"], kernel_shape=[2, 2], strides=[2, 2]))
    outputs += ["qmax", "bigmax", "bigavg"]
    inputs = [(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in feeds.items()]
    model = onnx.shape_inference.infer_shapes(make_model(nodes, inputs, [(o, None, 0) for o in outputs], opset=19),
                                              strict_mode=True)
    path = bnnc.compile_model(save(model, str(tmp_path)), str(tmp_path / "m.bnn"), passes=[]).path
    sess = InferenceSession(path, threads=threads, plan="emitted")
    compare(sess.run(None, feeds), ort_run(model, feeds))
    calls = [line for line in sess._plan.source.splitlines() if "k_pool_" in line and "(" in line]
    assert not calls, calls
    assert sess._plan.source.count("prange(") == (2 if threads > 1 else 0)  # the two big pools
