"""fold-residual-add-into-binary-output: a shortcut Add becomes the binary layer's residual input,
and the graph computes bit-identical outputs before and after the pass."""

from __future__ import annotations

import numpy as np

from bnnc.ir import op_key
from bnnc.pipeline import run_pipeline
from passes.fold_residual_add_into_binary_output import FoldResidualAddIntoBinaryOutput
from tests.bnn_graphs import Builder, before_pass, zero_row_input
from tests.helpers import (
    assert_close,
    ort_run,
    output_names,
    run_graph,
    serialized,
)

C, H = 9, 7  # an odd channel count, and a kernel with zero padding at every border


def _before_pass(model):
    return before_pass(model, FoldResidualAddIntoBinaryOutput)


def bireal_input(seed=0):
    return zero_row_input((2, C, H, H), seed)


def test_bireal_shortcuts_fold_and_the_outputs_do_not_change():
    b = Builder(1)
    y = b.bireal("x", C, 3)
    model = b.model([("x", [2, C, H, H])], [(y, [2, C, H, H])])
    graph = _before_pass(model)
    assert [op_key(n) for n in list(graph.graph)].count("Add") == 3
    x = bireal_input()
    before = run_graph(graph, {"x": x})[0]
    rec = run_pipeline(graph, [FoldResidualAddIntoBinaryOutput()])[0]
    assert rec.stats == {"folded": 3}
    assert "Add" not in [op_key(n) for n in list(graph.graph)]
    layers = [n for n in list(graph.graph) if op_key(n) == "bnnc.BinaryConv"]
    assert len(layers) == 3 and all(len(n.inputs) == 7 and n.inputs[6] is not None for n in layers)
    assert layers[-1].outputs[0].name == y and output_names(graph) == [y]
    after = run_graph(graph, {"x": x})[0]
    np.testing.assert_array_equal(after, before)  # the same float32 roundings, in the same order
    assert_close(after, ort_run(model, {"x": x})[0], rel=1e-5)


def test_shortcut_on_the_left_folds_too():
    b = Builder(2)
    y = b.conv(b.sign("x"), b.pm1((C, C, 3, 3)), pads=[1, 1, 1, 1])
    out = b.op("Add", ["x", b.bn(y, C)])
    model = b.model([("x", [2, C, H, H])], [(out, [2, C, H, H])])
    graph = _before_pass(model)
    x = bireal_input(1)
    before = run_graph(graph, {"x": x})[0]
    rec = run_pipeline(graph, [FoldResidualAddIntoBinaryOutput()])[0]
    assert rec.stats == {"folded": 1}
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], before)


def test_broadcasting_add_and_shared_outputs_are_left_alone():
    b = Builder(3)
    y1 = b.bn(b.conv(b.sign("x"), b.pm1((C, C, 3, 3)), pads=[1, 1, 1, 1]), C)
    pooled = b.op("GlobalAveragePool", ["x"])  # [N, C, 1, 1]: the Add broadcasts
    out1 = b.op("Add", [y1, pooled])
    y2 = b.bn(b.conv(b.sign(out1), b.pm1((C, C, 3, 3)), pads=[1, 1, 1, 1]), C)
    out2 = b.op("Add", [y2, out1])
    out3 = b.op("Mul", [y2, out2])  # y2 has a second reader
    model = b.model([("x", [2, C, H, H])], [(out3, [2, C, H, H])])
    graph = _before_pass(model)
    original = serialized(graph)
    rec = run_pipeline(graph, [FoldResidualAddIntoBinaryOutput()])[0]
    assert rec.stats == {"folded": 0} and not rec.modified
    assert serialized(graph) == original
    assert any("broadcasting Add" in r for r in rec.reasons), rec.reasons
