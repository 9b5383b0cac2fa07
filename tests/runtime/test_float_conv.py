"""Float Conv, Gemm and MatMul kernels (and their bnnc.Fused* forms) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnnc
from bnnc.ir import BNNC_DOMAIN
from bnnc.ir_convert import from_proto, to_proto
from runtime import InferenceSession
from runtime.errors import BnncError
from runtime.kernels import KERNELS, Step
from tests.helpers import load_graph, ort_run, run_graph
from tests.runtime.test_float_helpers import build, check, compare, randn

# (input NCHW, weight MCkk, attributes): odd channels, 1x1 and 7x7, stride, dilation,
# asymmetric pads, auto_pad, groups 2, depthwise (with and without a channel multiplier)
CONVS = {
    "3x3_pad1": ((1, 5, 9, 11), (7, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
    "1x1": ((2, 5, 6, 7), (9, 5, 1, 1), {}),
    "1x1_stride2": ((1, 5, 9, 9), (3, 5, 1, 1), dict(strides=[2, 2])),
    "7x7_stride2_pad3": ((1, 3, 23, 19), (8, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    "dilation2": ((1, 4, 13, 12), (5, 4, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    "asym_pads_strides": ((2, 3, 10, 9), (4, 3, 3, 2), dict(strides=[2, 1], pads=[0, 1, 2, 0], dilations=[1, 2])),
    "same_upper_s2": ((1, 3, 10, 9), (4, 3, 4, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "same_lower": ((1, 3, 8, 9), (4, 3, 4, 4), dict(auto_pad="SAME_LOWER")),
    "valid": ((1, 3, 8, 9), (4, 3, 3, 3), dict(auto_pad="VALID", strides=[1, 2])),
    "groups2": ((1, 6, 9, 8), (10, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "groups2_wide": ((1, 32, 7, 7), (64, 16, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "depthwise": ((2, 7, 11, 10), (7, 1, 3, 3), dict(group=7, pads=[1, 1, 1, 1])),
    "depthwise_s2_asym": ((1, 5, 12, 11), (5, 1, 3, 3), dict(group=5, strides=[2, 2], pads=[0, 0, 1, 1])),
    "depthwise_mult2_dil": ((1, 3, 10, 10), (6, 1, 5, 5), dict(group=3, dilations=[2, 1], pads=[4, 2, 4, 2])),
    "1x1_image": ((1, 4, 1, 1), (6, 4, 1, 1), {}),
    "kernel_eq_input": ((2, 3, 5, 5), (4, 3, 5, 5), {}),
    "conv1d": ((2, 4, 17), (6, 4, 3), dict(pads=[1, 2], strides=[2])),
}


@pytest.mark.parametrize("case", list(CONVS))
@pytest.mark.parametrize("bias", [True, False])
def test_conv(case, bias):
    xs, ws, attrs = CONVS[case]
    inits = {"w": randn(*ws, salt=1) * 0.5}
    ins = ["x", "w"]
    if bias:
        inits["b"] = randn(ws[0], salt=2)
        ins.append("b")
    check(helper.make_node("Conv", ins, ["y"], **attrs), {"x": randn(*xs)}, inits)


def test_conv_weights_from_input():
    """Weights computed in the graph (not a constant) are read at run time."""
    x, w, b = randn(1, 4, 8, 8), randn(6, 4, 3, 3, salt=1), randn(6, salt=2)
    check(helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]), {"x": x, "w": w, "b": b})


def test_conv_depthwise_weights_from_input():
    x, w = randn(1, 4, 8, 8), randn(4, 1, 3, 3, salt=1)
    check(helper.make_node("Conv", ["x", "w"], ["y"], group=4), {"x": x, "w": w})


GEMMS = {
    "plain": ((3, 5), (5, 7), (7,), {}),
    "transB_bias_row": ((4, 9), (6, 9), (1, 6), dict(transB=1)),
    "transA_transB": ((9, 4), (6, 9), (6,), dict(transA=1, transB=1)),
    "alpha_beta_col_bias": ((4, 9), (9, 6), (4, 1), dict(alpha=0.5, beta=-2.0)),
    "full_c": ((2, 3), (3, 4), (2, 4), dict(beta=0.25)),
    "scalar_c": ((2, 3), (3, 4), (), dict(alpha=3.0)),
    "no_c": ((1, 65), (65, 130), None, {}),
}


@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm(case):
    a_shape, b_shape, c_shape, attrs = GEMMS[case]
    inits = {"b": randn(*b_shape, salt=1)}
    ins = ["a", "b"]
    if c_shape is not None:
        inits["c"] = randn(*c_shape, salt=2)
        ins.append("c")
    check(helper.make_node("Gemm", ins, ["y"], **attrs), {"a": randn(*a_shape)}, inits)


def test_gemm_runtime_operands():
    a, b, c = randn(3, 5), randn(7, 5, salt=1), randn(7, salt=2)
    check(helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=1.5, beta=0.5), {"a": a, "b": b, "c": c})


MATMULS = {
    "2d": ((3, 5), (5, 7)),
    "3d_const_2d": ((2, 3, 5), (5, 7)),
    "batched": ((2, 3, 5), (2, 5, 4)),
    "broadcast": ((2, 1, 3, 5), (3, 5, 4)),
    "vec_left": ((5,), (5, 4)),
    "vec_right": ((2, 3, 5), (5,)),
}


@pytest.mark.parametrize("case", list(MATMULS))
@pytest.mark.parametrize("const_b", [True, False])
def test_matmul(case, const_b):
    a_shape, b_shape = MATMULS[case]
    a, b = randn(*a_shape), randn(*b_shape, salt=1)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    if const_b:
        check(node, {"a": a}, {"b": b})
    else:
        check(node, {"a": a, "b": b})


# the activation node that follows the layer in the reference graph, and the fused attributes
ACTS = {
    "Relu": ({}, []),
    "LeakyRelu": (dict(alpha=0.3), [0.3]),
    "Clip": (None, [-0.5, 0.75]),
    "Sigmoid": ({}, []),
    "Tanh": ({}, []),
    "HardSigmoid": (dict(alpha=0.3, beta=0.4), [0.3, 0.4]),
}


def _fused_case(layer: str, act: str):
    attrs, params = ACTS[act]
    inits = {}
    if layer == "Conv":
        feeds = {"x": randn(1, 6, 9, 8)}
        inits = {"w": randn(8, 6, 3, 3, salt=1) * 0.3, "b": randn(8, salt=2)}
        node = helper.make_node("Conv", ["x", "w", "b"], ["t"], pads=[1, 0, 1, 2], strides=[1, 2])
    elif layer == "TiledConv":  # a plane wide enough for the register tiles (conv_tile.py)
        feeds = {"x": randn(1, 6, 20, 34)}
        inits = {"w": randn(9, 6, 3, 3, salt=1) * 0.3, "b": randn(9, salt=2)}
        node = helper.make_node("Conv", ["x", "w", "b"], ["t"], pads=[1, 1, 1, 1])
    elif layer == "GroupedConv":
        feeds = {"x": randn(1, 6, 9, 8)}
        inits = {"w": randn(8, 3, 3, 3, salt=1) * 0.3, "b": randn(8, salt=2)}
        node = helper.make_node("Conv", ["x", "w", "b"], ["t"], group=2, pads=[1, 0, 1, 2], strides=[2, 2])
    elif layer == "DepthwiseConv":
        feeds = {"x": randn(1, 6, 9, 8)}
        inits = {"w": randn(6, 1, 3, 3, salt=1), "b": randn(6, salt=2)}
        node = helper.make_node("Conv", ["x", "w", "b"], ["t"], group=6, pads=[1, 1, 1, 1])
    elif layer == "Gemm":
        feeds = {"x": randn(3, 10)}
        inits = {"w": randn(7, 10, salt=1), "b": randn(7, salt=2)}
        node = helper.make_node("Gemm", ["x", "w", "b"], ["t"], transB=1, alpha=0.7)
    else:
        feeds = {"x": randn(2, 3, 10)}
        inits = {"w": randn(10, 7, salt=1)}
        node = helper.make_node("MatMul", ["x", "w"], ["t"])
    if act == "Clip":
        inits.update(lo=np.float32(params[0]), hi=np.float32(params[1]))
        act_node = helper.make_node("Clip", ["t", "lo", "hi"], ["y"])
    else:
        act_node = helper.make_node(act, ["t"], ["y"], **attrs)
    return node, act_node, feeds, inits, params


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("layer", ["Conv", "TiledConv", "GroupedConv", "DepthwiseConv", "Gemm", "MatMul"])
def test_fused_layer(layer, act):
    node, act_node, feeds, inits, params = _fused_case(layer, act)
    model = build([node, act_node], feeds, inits)
    expected = ort_run(model, feeds)
    op = "Conv" if layer.endswith("Conv") else layer
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if params:
        attrs["activation_params"] = params
    fused = helper.make_node(f"Fused{op}", list(node.input), ["y"], name="fused", domain=BNNC_DOMAIN,
                             activation=act, **attrs)
    compare(run_graph(_with_nodes(model, [fused], drop=("lo", "hi")), feeds), expected)


def test_fused_without_activation_is_the_layer():
    node, _, feeds, inits, _ = _fused_case("Gemm", "Relu")
    node.output[0] = "y"
    model = build([node], feeds, inits)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    fused = helper.make_node("FusedGemm", list(node.input), ["y"], name="f", domain=BNNC_DOMAIN, **attrs)
    compare(run_graph(_with_nodes(model, [fused]), feeds), ort_run(model, feeds))


def _with_nodes(model, nodes, drop=()):
    """``model`` (as the loader makes it) with ``nodes`` instead of its own and without the
    initializers ``drop``."""
    m = load_graph(model)
    proto = to_proto(m)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    kept = [t for t in proto.graph.initializer if t.name not in drop]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.opset_import.add(domain=BNNC_DOMAIN, version=1)
    return from_proto(proto)


def test_conv3d_is_a_clear_error():
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    with pytest.raises(BnncError, match="1-D or 2-D"):
        check(node, {"x": randn(1, 2, 4, 4, 4)}, {"w": randn(3, 2, 2, 2, 2)})


def test_inconsistent_plan_shapes_are_refused():
    """Numba kernels index without bounds checks, so a plan whose shapes do not fit is refused
    when the session is built (a hand-edited or hostile artifact), never read out of bounds."""
    step = Step(name="c", op="Conv", attrs={"pads": [1, 1, 1, 1]}, in_shapes=[(1, 2, 5, 5), (3, 2, 3, 3)],
                in_dtypes=["float32"] * 2, out_shapes=[(1, 3, 9, 9)], out_dtypes=["float32"],
                consts=[None, np.zeros((3, 2, 3, 3), np.float32)])
    with pytest.raises(BnncError, match="does not match the convolution"):
        KERNELS["Conv"](step)
    relu = Step(name="r", op="Relu", attrs={}, in_shapes=[(4,)], in_dtypes=["float32"], out_shapes=[(8,)],
                out_dtypes=["float32"], consts=[None])
    with pytest.raises(BnncError, match="differs from input shape"):
        KERNELS["Relu"](relu)


def _session(model, tmp_path, passes=None, threads=None):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    art = bnnc.compile_model(str(path), str(tmp_path / "m.bnn"), passes=passes).path
    return InferenceSession(art, threads=threads, plan="emitted")


# graphs whose every kernel is one of the float layers, run as one emitted plan function
# (runtime/program.py; the other tests run the same compiled kernels step by step): the conv's
# shifted-plane, wide-row, pointwise, narrow-row and direct paths, weights and statistics
# computed in the graph, Gemm's transposes and C, a broadcast batched MatMul
PLANNED = {
    "conv_relu_depthwise": ([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
                             helper.make_node("Relu", ["c"], ["r"]),
                             helper.make_node("Conv", ["r", "dw"], ["y"], group=6, pads=[1, 1, 1, 1])],
                            {"x": (2, 3, 11, 10)}, {"w": (6, 3, 3, 3), "b": (6,), "dw": (6, 1, 3, 3)}),
    "same_wide_pointwise": ([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                             helper.make_node("Conv", ["c", "w2"], ["d"], pads=[2, 2, 2, 2], strides=[2, 2]),
                             helper.make_node("Conv", ["d", "w3"], ["y"])],
                            {"x": (2, 3, 40, 38)}, {"w": (4, 3, 3, 3), "b": (4,), "w2": (5, 4, 5, 5),
                                                    "w3": (6, 5, 1, 1)}),
    "conv_weights_from_input": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                                {"x": (1, 4, 6, 6), "w": (5, 4, 3, 3), "b": (5,)}, {}),
    "gemm_runtime_b_c": ([helper.make_node("Gemm", ["a", "bm", "c"], ["y"], transA=1, transB=1, alpha=0.5,
                                           beta=2.0)], {"a": (7, 3), "bm": (4, 7), "c": (1, 4)}, {}),
    "matmul_batched_broadcast": ([helper.make_node("MatMul", ["a", "bm"], ["y"])], {"a": (2, 1, 3, 5),
                                                                                   "bm": (3, 5, 4)}, {}),
    "batchnorm_runtime_stats": ([helper.make_node("BatchNormalization", ["x", "s", "bb", "m", "v"], ["y"])],
                                {"x": (2, 3, 4, 5), "s": (3,), "bb": (3,), "m": (3,)}, {"v": (3,)}),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(PLANNED))
def test_layers_run_as_one_emitted_plan(case, threads, tmp_path):
    nodes, feed_shapes, init_shapes = PLANNED[case]
    feeds = {k: randn(*s, salt=i) for i, (k, s) in enumerate(feed_shapes.items())}
    inits = {k: np.abs(randn(*s, salt=10 + i)) + 0.1 for i, (k, s) in enumerate(init_shapes.items())}
    model = build(nodes, feeds, inits)
    sess = _session(model, tmp_path, passes=[], threads=threads)
    assert sess._plan is not None
    compare(sess.run(None, feeds), ort_run(model, feeds))
