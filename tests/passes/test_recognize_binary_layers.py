"""recognize-binary-layers: ±alpha Conv/Gemm/MatMul layers become bnnc binary layers, the graph
computes bit-identical outputs before and after the pass, and every layer it leaves float gets
the reason it gives."""

from __future__ import annotations

import numpy as np
import pytest

from bnnc.ir import attrs_of, const, op_key
from bnnc.layers import bit_tensors, get_layers, manifest_metadata
from bnnc.pipeline import run_pipeline
from passes.recognize_binary_layers import RecognizeBinaryLayers
from tests.bnn_graphs import Builder, before_pass, zero_row_input
from tests.helpers import (
    assert_close,
    op_counts,
    ort_run,
    run_graph,
    serialized,
)
from tests.reference_run import run_reference

F = np.float32


def _recognize(model, x):
    """Run the pass on the graph the pipeline gives it; assert that the op references compute the
    same outputs before and after it, and the runtime the same as the references."""
    graph = before_pass(model, RecognizeBinaryLayers)
    before = run_reference(graph, {"x": x})
    rec = run_pipeline(graph, [RecognizeBinaryLayers()])[0]
    after = run_reference(graph, {"x": x})
    for a, b, r in zip(after, before, run_graph(graph, {"x": x}), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(r, a)
    return graph, rec


def _layer(graph, op):
    (node,) = [n for n in list(graph.graph) if op_key(n) == op]
    return node


@pytest.mark.parametrize("alpha", [1.0, 0.5, [0.25, 2.0, 1.0, 4.0, 0.5, 1.0]])
def test_xnor_conv_with_zero_padding_and_zero_inputs(alpha):
    # powers of two: the float Conv sums ±alpha exactly, like the integer layer
    b = Builder(0)
    y = b.conv(b.sign("x"), b.pm1((6, 5, 3, 3), alpha), bias=np.linspace(-1, 1, 6), pads=[1, 1, 1, 1])
    model = b.model([("x", [2, 5, 6, 6])], [(y, [2, 6, 6, 6])])
    x = zero_row_input((2, 5, 6, 6))
    graph, rec = _recognize(model, x)
    assert rec.modified and rec.stats == {"xnor": 1, "binary-weight": 0, "ternary": 0, "float": 0}
    assert op_counts(graph) == {"bnnc.Binarize": 1, "bnnc.BinaryConv": 1}
    conv = _layer(graph, "bnnc.BinaryConv")
    assert conv.name == f"{y}_node" and conv.outputs[0].name == y  # the source model's names
    a = attrs_of(conv)
    assert a["output"] == "float" and a["pad_value"] == 0 and a["cin"] == 5 and a["cout"] == 6
    assert conv.inputs[1] is not None, "Sign(0) = 0 needs the nonzero mask"
    np.testing.assert_array_equal(const(conv.inputs[4]), np.broadcast_to(np.asarray(alpha, F), (6,)))
    (layer,) = get_layers(manifest_metadata(graph.graph))
    assert layer["mode"] == "xnor" and layer["packed_weight_bytes"] == const(conv.inputs[2]).nbytes
    assert bit_tensors(manifest_metadata(graph.graph))[conv.inputs[0].name]["zero"] == 0
    assert_close(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0], rel=1e-6)


def test_maxpool_moves_onto_bits_and_a_one_pad_folds_into_the_conv():
    b = Builder(1)
    s = b.sign("x", "larq")  # +1 at 0: no mask
    p = b.op("MaxPool", [s], kernel_shape=[2, 2], strides=[2, 2])
    padded = b.op("Pad", [p, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), b.const(F(1))])
    y = b.conv(padded, b.pm1((4, 3, 3, 3)))
    model = b.model([("x", [1, 3, 8, 8])], [(y, [1, 4, 4, 4])])
    graph, rec = _recognize(model, zero_row_input((1, 3, 8, 8), 1))
    assert rec.stats["xnor"] == 1
    assert op_counts(graph) == {"bnnc.Binarize": 1, "bnnc.BinaryConv": 1, "bnnc.BitMaxPool": 1}
    a = attrs_of(_layer(graph, "bnnc.BinaryConv"))
    assert a["pad_value"] == 1 and a["pads"] == [1, 1, 1, 1]


@pytest.mark.parametrize("order", ["chw", "hwc"])
def test_dense_after_a_flatten_keeps_the_flatten_order(order):
    b = Builder(2)
    s = b.sign("x")
    if order == "hwc":
        s = b.op("Transpose", [s], perm=[0, 2, 3, 1])
    flat = b.op("Reshape", [s, b.const(np.array([2, -1], np.int64))])
    y = b.op("Gemm", [flat, b.const(b.pm1((5, 36)), "w"), b.const(np.arange(5, dtype=F))], transB=1)
    model = b.model([("x", [2, 4, 3, 3])], [(y, [2, 5])])
    graph, rec = _recognize(model, zero_row_input((2, 4, 3, 3), 2))
    assert rec.stats["xnor"] == 1
    a = attrs_of(_layer(graph, "bnnc.BinaryDense"))
    assert a["in_order"] == order and a["k"] == 36 and a["in_chw"] == [4, 3, 3]


def test_real_input_gives_binary_weight_mode_and_zeros_give_ternary():
    b = Builder(3)
    w1 = b.pm1((4, 3, 3, 3), 0.5)
    y1 = b.conv("x", w1)  # real input
    w2 = b.pm1((2, 4, 3, 3))
    w2[0, :2] = 0  # ternary: the zeros need a second bitplane
    y2 = b.conv(b.sign(y1), w2)
    model = b.model([("x", [1, 3, 7, 7])], [(y2, [1, 2, 3, 3])])
    x = np.random.default_rng(3).integers(-2, 3, (1, 3, 7, 7)).astype(F)  # small integers: exact float sums
    graph, rec = _recognize(model, x)
    assert rec.stats == {"xnor": 0, "binary-weight": 1, "ternary": 1, "float": 0}
    assert _layer(graph, "bnnc.BinaryWeightConv").inputs[0].name == "x"
    assert _layer(graph, "bnnc.BinaryConv").inputs[3] is not None, "ternary weights carry a mask bitplane"
    assert [r["mode"] for r in get_layers(manifest_metadata(graph.graph))] == ["binary-weight", "ternary"]


def _refused(model, reason):
    graph = before_pass(model, RecognizeBinaryLayers)
    original = serialized(graph)
    rec = run_pipeline(graph, [RecognizeBinaryLayers()])[0]
    assert not rec.modified and rec.stats["float"] >= 1
    assert serialized(graph) == original
    assert any(reason in r for r in rec.reasons), rec.reasons
    return graph, rec


def test_float_weights_stay_float_with_their_deviation():
    b = Builder(4)
    w = b.pm1((4, 3, 3, 3))
    w[1, 0, 0, 0] = 1.5
    y = b.conv(b.sign("x"), w)
    graph, rec = _refused(b.model([("x", [1, 3, 5, 5])], [(y, [1, 4, 3, 3])]),
                          "weights are not ±alpha per output channel (max deviation")
    (layer,) = get_layers(manifest_metadata(graph.graph))
    assert layer["mode"] == "float" and layer["weight_deviation"] > 0.4
    assert rec.reasons[0].startswith("conv_")


@pytest.mark.parametrize("case,reason", [
    ("runtime_weights", "weights are not constant"),
    ("fan_in", "only 2 weights per output channel"),
    ("trans_a", "Gemm with transA=1"),
    ("bias", "bias is not constant"),
])
def test_layers_bnnc_cannot_binarize_say_why(case, reason):
    b = Builder(5)
    if case == "runtime_weights":
        w = b.op("Sign", ["x"])
        y = b.op("MatMul", [b.sign("x"), w])
        model = b.model([("x", [4, 4])], [(y, [4, 4])])
    elif case == "fan_in":
        y = b.op("Gemm", [b.sign("x"), b.const(b.pm1((3, 2)))], transB=1)
        model = b.model([("x", [2, 2])], [(y, [2, 3])])
    elif case == "trans_a":
        y = b.op("Gemm", [b.sign("x"), b.const(b.pm1((4, 5)))], transA=1)
        model = b.model([("x", [4, 2])], [(y, [2, 5])])
    else:
        y = b.op("Gemm", [b.sign("x"), b.const(b.pm1((5, 4))), "bias"], transB=1)  # bias is a graph input
        model = b.model([("x", [5, 4]), ("bias", [5])], [(y, [5, 5])])
    _refused(model, reason)


@pytest.mark.parametrize("pad_value,conv_pads,reason", [
    (0.5, [0, 0, 0, 0], "Pad value 0.5 is neither 0 nor ±1"),
    (1.0, [1, 1, 1, 1], "a ±1 Pad followed by a zero-padded conv"),
])
def test_pads_that_are_not_conv_padding_stay_float(pad_value, conv_pads, reason):
    b = Builder(6)
    padded = b.op("Pad", [b.sign("x"), b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), b.const(F(pad_value))])
    y = b.conv(padded, b.pm1((4, 3, 3, 3)), pads=conv_pads)
    out = 5 + 2 * conv_pads[0] - 2
    _refused(b.model([("x", [1, 3, 3, 3])], [(y, [1, 4, out, out])]), reason)


def test_two_layers_share_one_binarize():
    b = Builder(7)
    s = b.sign("x")
    y = b.op("Add", [b.conv(s, b.pm1((4, 3, 3, 3))), b.conv(s, b.pm1((4, 3, 3, 3)))])
    model = b.model([("x", [1, 3, 5, 5])], [(y, [1, 4, 3, 3])])
    graph, rec = _recognize(model, zero_row_input((1, 3, 5, 5), 7))
    assert rec.stats["xnor"] == 2 and op_counts(graph)["bnnc.Binarize"] == 1
    (entry,) = bit_tensors(manifest_metadata(graph.graph)).values()
    assert len(entry["readers"]) == 2


def test_graph_without_layers_is_left_alone():
    b = Builder(8)
    y = b.op("Relu", [b.sign("x")])
    graph = before_pass(b.model([("x", [1, 3])], [(y, [1, 3])]), RecognizeBinaryLayers)
    before = serialized(graph)
    rec = run_pipeline(graph, [RecognizeBinaryLayers()])[0]
    assert not rec.modified and rec.reasons == [] and serialized(graph) == before
