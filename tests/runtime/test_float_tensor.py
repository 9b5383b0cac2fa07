"""Layout and reduction kernels (views, Transpose, Concat, Split, Slice, Gather, Expand, Tile, Pad,
Reduce*) against onnxruntime."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from onnx import helper

import bnnc
from runtime import InferenceSession
from runtime.errors import BnncError
from tests.helpers import save
from tests.runtime.test_float_helpers import build, check, check_lowered, randn

I64 = np.int64


@pytest.mark.parametrize("shape,target,allowzero", [
    ((2, 3, 4), [4, -1], 0),
    ((2, 3, 4), [0, 12], 0),
    ((2, 3, 4), [2, 0, -1], 0),
    ((2, 3, 4), [24], 1),
])
def test_reshape(shape, target, allowzero):
    node = helper.make_node("Reshape", ["x", "s"], ["y"], **({"allowzero": 1} if allowzero else {}))
    check(node, {"x": randn(*shape)}, {"s": np.array(target, I64)})


def test_view_chain_feeds_a_kernel():
    """Views of a graph input, then a kernel reading the view, then a view as graph output."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=2),
        helper.make_node("Unsqueeze", ["f", "a0"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("Squeeze", ["r", "a0"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),
    ]
    check(nodes, {"x": randn(2, 3, 4, 5)}, {"a0": np.array([0], I64)})


@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_flatten(axis):
    check(helper.make_node("Flatten", ["x"], ["y"], axis=axis), {"x": randn(2, 3, 4, 5)})


def test_squeeze_unsqueeze():
    check(helper.make_node("Squeeze", ["x", "a"], ["y"]), {"x": randn(1, 3, 1, 5)}, {"a": np.array([0, -2], I64)})
    check(helper.make_node("Squeeze", ["x"], ["y"]), {"x": randn(1, 3, 1, 5)})
    check(helper.make_node("Unsqueeze", ["x", "a"], ["y"]), {"x": randn(3, 5)}, {"a": np.array([0, 3], I64)})


@pytest.mark.parametrize("perm", [None, [0, 2, 3, 1], [0, 3, 1, 2], [2, 0, 3, 1]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check(helper.make_node("Transpose", ["x"], ["y"], **attrs), {"x": randn(2, 3, 4, 5)})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for k, s in enumerate(shapes):
        s[axis] += k
    feeds = {f"x{k}": randn(*s, salt=k) for k, s in enumerate(shapes)}
    check(helper.make_node("Concat", list(feeds), ["y"], axis=axis), feeds)


def test_concat_constant_and_int():
    check(helper.make_node("Concat", ["a", "b"], ["y"], axis=0), {"a": np.arange(3, dtype=I64)},
          {"b": np.array([7, 8], I64)})


def test_split_sizes_input():
    check(helper.make_node("Split", ["x", "s"], ["a", "b", "c"], axis=1), {"x": randn(2, 9, 3)},
          {"s": np.array([2, 3, 4], I64)})


def test_split_equal_and_num_outputs():
    check(helper.make_node("Split", ["x"], ["a", "b", "c"], axis=-1), {"x": randn(2, 3, 9)})
    check(helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0, num_outputs=3), {"x": randn(8, 2)}, opset=18)


def test_split_attribute_opset11():
    check_lowered(helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 4]), {"x": randn(2, 5)}, opset=11)


SLICES = [
    ([1], [3], None, None),
    ([0, -3], [2, 100], [0, 2], None),
    ([-1], [-1000], [1], [-1]),
    ([4, 0], [0, 9], [1, 2], [-2, 3]),
    ([2**62], [-(2**62)], [-1], [-2]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice(starts, ends, axes, steps):
    ins, inits = ["x", "s", "e"], {"s": np.array(starts, I64), "e": np.array(ends, I64)}
    if axes is not None:
        ins.append("a")
        inits["a"] = np.array(axes, I64)
    if steps is not None:
        ins.append("t")
        inits["t"] = np.array(steps, I64)
        if axes is None:
            ins[3:3] = [""]
    check(helper.make_node("Slice", ins, ["y"]), {"x": randn(3, 6, 9)}, inits)


def test_slice_attributes_opset9():
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, -4], ends=[3, 1000], axes=[0, 2])
    check_lowered(node, {"x": randn(3, 6, 9)}, opset=9)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis):
    idx = np.array([[0, -1], [2, 1]], I64)
    check(helper.make_node("Gather", ["x", "i"], ["y"], axis=axis), {"x": randn(3, 4, 5)}, {"i": idx})


def test_gather_runtime_indices_and_scalar():
    check(helper.make_node("Gather", ["x", "i"], ["y"], axis=1), {"x": randn(3, 4), "i": np.array([3, -4, 0], I64)})
    check(helper.make_node("Gather", ["x", "i"], ["y"], axis=0), {"x": randn(3, 4)}, {"i": np.array(-2, I64)})


@pytest.mark.parametrize("shape,target", [((3, 1), [2, 3, 4]), ((1, 4), [3, 1]), ((2, 1, 1), [2, 3, 1])])
def test_expand(shape, target):
    check(helper.make_node("Expand", ["x", "s"], ["y"]), {"x": randn(*shape)}, {"s": np.array(target, I64)})


def test_tile():
    check(helper.make_node("Tile", ["x", "r"], ["y"]), {"x": randn(2, 3, 1)}, {"r": np.array([3, 1, 4], I64)})


PADS = [
    ([0, 1, 2, 0, 1, 3], "constant"),
    ([1, 0, 1, 0, 2, 1], "reflect"),
    ([1, 2, 0, 2, 0, 3], "edge"),
    ([0, -1, 2, 0, 1, -2], "constant"),
    ([0, -1, 1, 0, 1, -2], "edge"),
]


@pytest.mark.parametrize("pads,mode", PADS)
def test_pad(pads, mode):
    inits = {"p": np.array(pads, I64)}
    ins = ["x", "p"]
    if mode == "constant":
        inits["v"] = np.array(-1.0, np.float32)
        ins.append("v")
    check(helper.make_node("Pad", ins, ["y"], mode=mode), {"x": randn(2, 4, 5)}, inits)


def test_pad_runtime_value_and_axes():
    feeds = {"x": randn(2, 4, 5), "v": np.array(2.5, np.float32)}
    inits = {"p": np.array([1, 2, 3, 0], I64), "a": np.array([-1, 1], I64)}
    check(helper.make_node("Pad", ["x", "p", "v", "a"], ["y"]), feeds, inits, opset=18)


def test_pad_wrap_opset19():
    check(helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap"), {"x": randn(3, 4)},
          {"p": np.array([1, 2, 2, 1], I64)}, opset=19)


def test_pad_attribute_opset2():
    node = helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 2], value=1.0)
    check_lowered(node, {"x": randn(3, 4)}, opset=2)


REDUCES = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"]


@pytest.mark.parametrize("op", REDUCES)
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, -1], 0), (None, 1), (None, 0), ([2, 1], 1)])
def test_reduce_axes_input_opset18(op, axes, keepdims):
    ins, inits = ["x"], {}
    if axes is not None:
        ins.append("a")
        inits["a"] = np.array(axes, I64)
    node = helper.make_node(op, ins, ["y"], keepdims=keepdims)
    check(node, {"x": randn(3, 4, 5) * 0.8 + 0.2}, inits, opset=18)


@pytest.mark.parametrize("op", REDUCES)
def test_reduce_axes_attribute_opset13(op):
    node = helper.make_node(op, ["x"], ["y"], axes=[1, 3], keepdims=1) if op != "ReduceSum" else \
        helper.make_node(op, ["x", "a"], ["y"], keepdims=1)
    inits = {"a": np.array([1, 3], I64)} if op == "ReduceSum" else {}
    check(node, {"x": randn(2, 3, 4, 5)}, inits, opset=13)


def test_reduce_noop_with_empty_axes():
    node = helper.make_node("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)
    check(node, {"x": randn(3, 4)}, opset=13)


def test_reduce_int():
    x = np.arange(24, dtype=I64).reshape(2, 3, 4) - 7
    check(helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=0), {"x": x}, opset=13)


def test_gather_runtime_index_out_of_range():
    """A run-time index outside [-dim, dim - 1] is a user error, not a read past the input."""
    x = randn(3, 4)
    model = build([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"x": x, "i": np.array([0, 1], I64)})
    with tempfile.TemporaryDirectory() as d:
        sess = InferenceSession(bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=[]).path)
    for bad in (4, -5):
        with pytest.raises(BnncError, match="out of range"):
            sess.run(None, {"x": x, "i": np.array([0, bad], I64)})
