"""fold-affine-into-binary-output: per-channel affine ops after a float-output binary layer go
into its scale and bias; the graph computes the same outputs before and after the pass
(bit-identical where the constants are powers of two), and ops it cannot absorb say why."""

from __future__ import annotations

import numpy as np
import pytest

from bnnc.ir import op_key
from bnnc.pipeline import run_pipeline
from passes.fold_affine_into_binary_output import FoldAffineIntoBinaryOutput
from tests.bnn_graphs import Builder, before_pass, zero_row_input
from tests.helpers import (
    assert_close,
    op_counts,
    ort_run,
    output_names,
    run_graph,
    serialized,
)
from tests.reference_run import run_reference

F = np.float32
C = 6


def _per_channel(values):
    return np.asarray(values, F).reshape(1, C, 1, 1)


def _fold(model, x):
    """(graph, record, reference output before, reference output after); the runtime computes the
    references' result after the pass (binary-weight layers sum in float: to the rounding)."""
    graph = before_pass(model, FoldAffineIntoBinaryOutput)
    before = run_reference(graph, {"x": x})[0]
    rec = run_pipeline(graph, [FoldAffineIntoBinaryOutput()])[0]
    after = run_reference(graph, {"x": x})[0]
    assert_close(run_graph(graph, {"x": x})[0], after, rel=1e-6)
    return graph, rec, before, after


def test_dyadic_mul_add_div_sub_fold_bit_identically():
    b = Builder(0)
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)), pads=[1, 1, 1, 1])
    y = b.op("Mul", [b.const(_per_channel([0.5, 2, -1, 4, 0.25, -2])), y])  # the layer on the right
    y = b.op("Add", [y, b.const(_per_channel([1, -3, 0.5, 0, 2, 8]))])
    y = b.op("Div", [y, b.const(F(4))])
    y = b.op("Sub", [y, b.const(_per_channel([0.25, 0, 1, -1, 0.5, 2]))])
    model = b.model([("x", [2, 3, 5, 5])], [(y, [2, C, 5, 5])])
    x = zero_row_input((2, 3, 5, 5))
    graph, rec, before, after = _fold(model, x)
    assert rec.modified and rec.stats == {"folded": 4} and rec.reasons == []
    assert op_counts(graph) == {"bnnc.Binarize": 1, "bnnc.BinaryConv": 1}
    assert list(graph.graph)[-1].outputs[0].name == y and output_names(graph) == [y]
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after, ort_run(model, {"x": x})[0])


@pytest.mark.parametrize("binary_input", [True, False])
def test_batchnorm_folds_into_scale_and_bias(binary_input):
    b = Builder(1)
    x_in = b.sign("x") if binary_input else "x"
    y = b.bn(b.conv(x_in, b.pm1((C, 3, 3, 3), 0.7)), C, neg_frac=0.5)
    flat = b.op("Flatten", [y])
    gemm = b.op("Gemm", [flat, b.const(b.pm1((3, C * 9), 0.3)), b.const(np.arange(3, dtype=F))], transB=1)
    out = b.op("Mul", [gemm, b.const(np.array([1.5, -2, 0.1], F))])
    model = b.model([("x", [2, 3, 5, 5])], [(out, [2, 3])])
    x = zero_row_input((2, 3, 5, 5), 1)
    graph, rec, before, after = _fold(model, x)
    assert rec.stats == {"folded": 2} and "BatchNormalization" not in op_counts(graph)
    # (s * scale + bias) * a + d becomes s * (scale * a) + (bias * a + d): roundings move
    assert_close(after, before, rel=1e-6)
    assert_close(after, ort_run(model, {"x": x})[0], rel=1e-5)


def _refused(model, reason):
    graph = before_pass(model, FoldAffineIntoBinaryOutput)
    original = serialized(graph)
    rec = run_pipeline(graph, [FoldAffineIntoBinaryOutput()])[0]
    assert not rec.modified and rec.stats == {"folded": 0}
    assert serialized(graph) == original
    assert any(reason in r for r in rec.reasons), rec.reasons


def _layer_then(op_of_y, out_shape=(1, C, 3, 3), extra_inputs=()):
    b = Builder(2)
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)))
    out = op_of_y(b, y)
    return b.model([("x", [1, 3, 5, 5]), *extra_inputs], [(out, list(out_shape))])


def test_ops_that_are_not_per_channel_affine_stay():
    _refused(_layer_then(lambda b, y: b.op("Relu", [y])), "Relu node relu_4_node is not a per-channel affine op")
    _refused(_layer_then(lambda b, y: b.op("Add", [y, b.const(np.ones((1, 1, 3, 3), F))])),
             "mixes in a value that is not a per-channel constant")
    _refused(_layer_then(lambda b, y: b.op("Mul", [y, "s"]), extra_inputs=[("s", [1, C, 1, 1])]),
             "reads a computed value 's', not a constant")
    _refused(_layer_then(lambda b, y: b.op("Sub", [b.const(_per_channel(np.ones(C))), y])),
             "has the layer's value on the right")


def test_a_value_with_two_readers_stays():
    model = _layer_then(lambda b, y: b.op("Add", [b.op("Mul", [y, b.const(F(2))]), b.op("Relu", [y])]))
    _refused(model, "has 2 readers")


def test_layers_that_write_bits_are_not_touched():
    b = Builder(3)
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)))
    z = b.op("Mul", [b.conv(b.sign(b.bn(y, C)), b.pm1((C, C, 1, 1))), b.const(F(2))])
    graph, rec, before, after = _fold(b.model([("x", [1, 3, 5, 5])], [(z, [1, C, 3, 3])]), zero_row_input((1, 3, 5, 5)))
    assert rec.stats == {"folded": 1}  # the Mul after the last layer only
    assert [op_key(n) for n in list(graph.graph)].count("bnnc.BinaryConv") == 2
    np.testing.assert_array_equal(after, before)
