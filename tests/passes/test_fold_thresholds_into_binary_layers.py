"""fold-thresholds-into-binary-layers: the float chain between a binary layer and the next
binarizer becomes a per-channel integer rule; the graph computes bit-identical outputs before
and after the pass (and the same as onnxruntime), and chains it cannot fold say why."""

from __future__ import annotations

import numpy as np
import pytest

from bnnc.ir import attrs_of, const, op_key
from bnnc.layers import get_layers, manifest_metadata
from bnnc.pipeline import run_pipeline
from passes.fold_thresholds_into_binary_layers import FoldThresholdsIntoBinaryLayers, fit_rules
from tests.bnn_graphs import Builder, before_pass, zero_row_input
from tests.helpers import (
    op_counts,
    ort_run,
    run_graph,
    serialized,
)
from tests.reference_run import run_reference

F = np.float32
C = 7


def _fold(model, x):
    """Run the pass on the graph the pipeline gives it; assert that the op references compute the
    same outputs before and after it, as onnxruntime on the source model and the runtime do."""
    graph = before_pass(model, FoldThresholdsIntoBinaryLayers)
    before = run_reference(graph, {"x": x})
    rec = run_pipeline(graph, [FoldThresholdsIntoBinaryLayers()])[0]
    after = run_reference(graph, {"x": x})
    runtime = run_graph(graph, {"x": x})
    for a, b, o, r in zip(after, before, ort_run(model, {"x": x}), runtime, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, o)  # ±1 weights after the rule: integer outputs, exact
        np.testing.assert_array_equal(r, a)
    return graph, rec


def _two_layers(b, chain):
    """Sign -> BinaryConv -> chain(y) -> Sign -> BinaryConv (3x3, zero padding)."""
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)), pads=[1, 1, 1, 1])
    z = b.conv(b.sign(chain(y)), b.pm1((4, C, 3, 3)), pads=[1, 1, 1, 1])
    return b.model([("x", [2, 3, 6, 6])], [(z, [2, 4, 6, 6])])


def _first_conv(graph):
    return next(n for n in list(graph.graph) if op_key(n) == "bnnc.BinaryConv")


def test_batchnorm_with_negative_scales_becomes_a_rule():
    b = Builder(0)
    model = _two_layers(b, lambda y: b.bn(y, C, neg_frac=0.5))
    graph, rec = _fold(model, zero_row_input((2, 3, 6, 6)))
    assert rec.modified and rec.stats["folded"] == 1 and rec.stats["flipped_channels"] >= 1
    assert op_counts(graph) == {"bnnc.Binarize": 1, "bnnc.BinaryConv": 2}
    conv = _first_conv(graph)
    assert conv.name == get_layers(manifest_metadata(graph.graph))[0]["name"]  # keeps the Conv's name
    a = attrs_of(conv)
    assert a["output"] == "bits" and const(conv.inputs[4]).shape == (C, 5)
    assert get_layers(manifest_metadata(graph.graph))[0]["output"] == "bits"


def test_exact_ties_keep_a_nonzero_mask():
    # s + (-2) is exactly 0 at s = 2: Sign gives 0 there, which the rule must keep
    b = Builder(1)
    model = _two_layers(b, lambda y: b.op("Add", [y, b.const(np.full((1, C, 1, 1), -2, F))]))
    graph, rec = _fold(model, zero_row_input((2, 3, 6, 6), 1))
    assert rec.stats["tie_channels"] == C
    conv = _first_conv(graph)
    assert attrs_of(conv)["out_mask"] == 1 and len(conv.outputs) == 2


def test_prelu_with_a_negative_slope_is_tabulated_too():
    # |t| - 2.5 changes sign twice over s: a rule with a middle run
    b = Builder(2)
    slope = b.const(np.full((C, 1, 1), -1, F))
    model = _two_layers(b, lambda y: b.op("Add", [b.op("PRelu", [y, slope]), b.const(F(-2.5))]))
    graph, rec = _fold(model, zero_row_input((2, 3, 6, 6), 2))
    assert rec.stats["folded"] == 1
    rule = const(_first_conv(graph).inputs[4])
    assert np.all(rule[:, 2] == 1) and np.all(rule[:, 3] == -1) and np.all(rule[:, 4] == 1)


def test_maxpool_in_the_chain_pools_the_bits_with_min_where_the_chain_flips():
    b = Builder(3)
    gamma = np.where(np.arange(C) % 2, -1.0, 1.0)
    # the pool before the BatchNorm: the Sign cannot move above it, the fold must handle it
    model = _two_layers(b, lambda y: b.bn(b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
                                          C, gamma=gamma))
    graph, rec = _fold(model, zero_row_input((2, 3, 6, 6), 3))
    assert rec.stats["pooled_on_bits"] == 1
    pool = next(n for n in list(graph.graph) if op_key(n) == "bnnc.BitMaxPool")
    assert pool.inputs[2], "flipped channels take the min"


@pytest.mark.parametrize("rows,expected", [
    ([[1, 1, 1]], [[3, 2, 1, 1, 1]]),  # constant
    ([[-1, 1, 1]], [[1, 0, -1, 1, 1]]),  # one threshold
    ([[1, 0, -1]], [[1, 1, 1, 0, -1]]),  # flipped, with a tie
])
def test_fit_rules_reads_off_the_runs(rows, expected):
    np.testing.assert_array_equal(fit_rules(np.array(rows), np.array([0, 1, 2])), expected)


def test_fit_rules_refuses_more_than_three_runs():
    assert fit_rules(np.array([[1, -1, 1, -1]]), np.arange(4)) is None


def _refused(model, reason):
    graph = before_pass(model, FoldThresholdsIntoBinaryLayers)
    original = serialized(graph)
    rec = run_pipeline(graph, [FoldThresholdsIntoBinaryLayers()])[0]
    assert not rec.modified and rec.stats["folded"] == 0
    assert serialized(graph) == original
    assert any(reason in r for r in rec.reasons), rec.reasons


def test_a_value_with_another_reader_is_not_folded():
    b = Builder(4)
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)), pads=[1, 1, 1, 1])
    bn = b.bn(y, C)
    z = b.op("Add", [b.conv(b.sign(bn), b.pm1((C, C, 1, 1))), bn])
    _refused(b.model([("x", [1, 3, 4, 4])], [(z, [1, C, 4, 4])]), "has other readers")


def test_a_non_constant_operand_is_not_folded():
    b = Builder(5)
    y = b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)), pads=[1, 1, 1, 1])
    z = b.conv(b.sign(b.op("Add", [y, "x2"])), b.pm1((4, C, 3, 3)), pads=[1, 1, 1, 1])
    _refused(b.model([("x", [1, 3, 4, 4]), ("x2", [1, C, 4, 4])], [(z, [1, 4, 4, 4])]),
             "mixes in a value that is not a per-channel constant")


def test_a_spatially_varying_constant_is_not_folded():
    b = Builder(6)
    model = _two_layers(b, lambda y: b.op("Add", [y, b.const(np.linspace(-1, 1, 36, dtype=F).reshape(1, 1, 6, 6))]))
    _refused(model, "mixes in a value that is not a per-channel constant")


def test_a_float_layer_or_a_binary_weight_layer_before_the_sign_is_not_folded():
    b = Builder(7)
    y = b.conv("x", b.pm1((C, 3, 3, 3), 0.5), pads=[1, 1, 1, 1])  # real input: binary-weight mode
    z = b.conv(b.sign(y), b.pm1((4, C, 3, 3)), pads=[1, 1, 1, 1])
    _refused(b.model([("x", [1, 3, 4, 4])], [(z, [1, 4, 4, 4])]), "comes from binary-weight layer")
    b = Builder(8)
    y = b.op("Softmax", [b.conv(b.sign("x"), b.pm1((C, 3, 3, 3)), pads=[1, 1, 1, 1])], axis=1)
    z = b.conv(b.sign(y), b.pm1((4, C, 3, 3)), pads=[1, 1, 1, 1])
    _refused(b.model([("x", [1, 3, 4, 4])], [(z, [1, 4, 4, 4])]),
             "is not computed from a binary layer by per-channel ops")


def test_a_rule_with_too_many_runs_and_a_pool_before_a_non_monotone_chain_are_refused():
    b = Builder(9)
    neg = lambda: b.const(np.full((C, 1, 1), -1, F))  # noqa: E731
    # ||t| - 3.5| - 1: negative only near s = ±3.5 -> five runs over s
    model = _two_layers(b, lambda y: b.op("Add", [b.op("PRelu", [b.op("Add", [b.op("PRelu", [y, neg()]),
                                                                           b.const(F(-3.5))]), neg()]),
                                                  b.const(F(-1))]))
    _refused(model, "changes sign more than twice")
    b = Builder(10)
    model = _two_layers(b, lambda y: b.op("Add", [b.op("PRelu", [b.op("MaxPool", [y], kernel_shape=[1, 1]),
                                                                 b.const(np.full((C, 1, 1), -1, F))]),
                                                  b.const(F(-2.5))]))
    _refused(model, "MaxPool between the layer and a non-monotone chain")
