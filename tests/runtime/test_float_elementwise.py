"""Elementwise kernels (unary, broadcasting binary, logic, Where, Cast, variadic, Softmax) against
onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import ort_run
from tests.runtime.test_float_helpers import build, check, compare, randn, rng, run_lowered


def _awkward(shape=(3, 5, 7)) -> np.ndarray:
    """Random values plus exact halves (rounding ties), zeros and signed zeros."""
    x = randn(*shape) * 3
    flat = x.reshape(-1)
    flat[:8] = [0.5, 1.5, 2.5, -0.5, -2.5, 0.0, -0.0, 3.0]
    return x


@pytest.mark.parametrize("op", ["Neg", "Abs", "Floor", "Ceil", "Round", "Sign", "Erf", "Exp", "Sin", "Cos", "Softplus"])
def test_unary(op):
    check(helper.make_node(op, ["x"], ["y"]), {"x": _awkward()})


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive(op):
    check(helper.make_node(op, ["x"], ["y"]), {"x": np.abs(_awkward()) + 0.25})


def test_unary_nan_and_inf():
    """log(0) = -inf, sqrt(-1) = nan: the same specials as onnxruntime, no warnings."""
    x = np.array([0.0, -1.0, 4.0], np.float32)
    for op in ("Log", "Sqrt"):
        check(helper.make_node(op, ["x"], ["y"]), {"x": x})


def test_erf_large():
    check(helper.make_node("Erf", ["x"], ["y"]), {"x": randn(5, 100, 70)})


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sign"])
def test_unary_int(op):
    x = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    check(helper.make_node(op, ["x"], ["y"]), {"x": x})


def test_not():
    check(helper.make_node("Not", ["x"], ["y"]), {"x": rng().random((4, 5)) > 0.5})


BROADCASTS = [((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (5,)), ((3, 1, 5), (4, 1)), ((1,), (2, 3)), ((), (2, 3))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", BROADCASTS)
def test_arithmetic(op, shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1], salt=1)
    if op == "Div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    check(helper.make_node(op, ["a", "b"], ["y"]), {"a": a, "b": b})


def test_arithmetic_constant_operand():
    check(helper.make_node("Mul", ["a", "b"], ["y"]), {"a": randn(2, 3, 4)}, {"b": randn(3, 1, salt=1)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arithmetic_int(op):
    a = np.array([[7, -7, 9, -9, 0, 5]], np.int64)
    b = np.array([[2], [-3]], np.int64)
    check(helper.make_node(op, ["a", "b"], ["y"]), {"a": a, "b": b})


def test_pow():
    base = np.abs(randn(3, 4)) + 0.1
    check(helper.make_node("Pow", ["a", "b"], ["y"]), {"a": base, "b": randn(4, salt=1)})
    check(helper.make_node("Pow", ["a", "b"], ["y"]), {"a": randn(3, 4)}, {"b": np.array([2, 3, 0, 1], np.int64)})


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_compare(op):
    a = np.round(randn(3, 4, 5))
    b = np.round(randn(4, 1, salt=1))
    check(helper.make_node(op, ["a", "b"], ["y"]), {"a": a, "b": b})


def test_compare_int():
    a = np.arange(12, dtype=np.int64).reshape(3, 4) % 5
    check(helper.make_node("Equal", ["a", "b"], ["y"]), {"a": a}, {"b": np.array([0, 1, 2, 3], np.int64)})


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    r = rng(2)
    check(helper.make_node(op, ["a", "b"], ["y"]), {"a": r.random((3, 4)) > 0.5, "b": r.random((4,)) > 0.5})


def test_where():
    r = rng(3)
    feeds = {"c": r.random((3, 1, 5)) > 0.5, "x": randn(4, 5), "y": randn(3, 4, 1, salt=1)}
    check(helper.make_node("Where", ["c", "x", "y"], ["z"]), feeds)


def test_where_sign_equal_idiom():
    """bitorch's binarizer: Where(Equal(Sign(x), 0), 1, Sign(x)), scalar constant branches."""
    nodes = [
        helper.make_node("Sign", ["x"], ["s"]),
        helper.make_node("Equal", ["s", "zero"], ["e"]),
        helper.make_node("Where", ["e", "one", "s"], ["y"]),
    ]
    x = _awkward()
    check(nodes, {"x": x}, {"zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)})


CASTS = [
    (np.float32, TensorProto.INT64),
    (np.float32, TensorProto.INT32),
    (np.float32, TensorProto.BOOL),
    (np.float32, TensorProto.DOUBLE),
    (np.float32, TensorProto.UINT8),
    (np.int64, TensorProto.FLOAT),
    (np.bool_, TensorProto.FLOAT),
    (np.float32, TensorProto.FLOAT),
]


@pytest.mark.parametrize("src,to", CASTS)
def test_cast(src, to):
    x = _awkward()
    if to == TensorProto.UINT8:
        x = np.abs(x)
    check(helper.make_node("Cast", ["x"], ["y"], to=to), {"x": x.astype(src)})


@pytest.mark.parametrize("op", ["Min", "Max", "Sum", "Mean"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_variadic(op, n):
    shapes = [(3, 1, 5), (4, 1), (5,)][:n]
    feeds = {f"x{i}": randn(*s, salt=i) for i, s in enumerate(shapes)}
    check(helper.make_node(op, list(feeds), ["y"]), feeds)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((3, 10), None), ((2, 3, 4, 5), 1), ((2, 3, 4), -2), ((5,), 0)])
def test_softmax_opset13(op, shape, axis):
    attrs = {} if axis is None else {"axis": axis}
    check(helper.make_node(op, ["x"], ["y"], **attrs), {"x": randn(*shape) * 5}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 1, 2])
def test_softmax_legacy_hint(op, axis):
    """Opsets < 13 normalise over the flattened block from ``axis`` (default 1); the kernel
    applies that when the plan step carries the hint attribute ``_opset``."""
    attrs = {} if axis is None else {"axis": axis}
    feeds = {"x": randn(2, 3, 4, 5) * 3}
    model = build([helper.make_node(op, ["x"], ["y"], **attrs)], feeds, opset=11)
    expected = ort_run(model, feeds)
    hinted = onnx.ModelProto()
    hinted.CopyFrom(model)
    hinted.graph.node[0].attribute.append(helper.make_attribute("_opset", 11))
    compare(run_lowered(hinted, feeds), expected)
