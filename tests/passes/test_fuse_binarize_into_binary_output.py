"""fuse-binarize-into-binary-output: a Binarize of a float-output binary layer becomes the layer's
extra outputs; outputs and every packed tensor stay bit-identical, and agree with onnxruntime."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from bnnc.ir import attrs_of, op_key
from bnnc.pipeline import run_pipeline
from bnnc.verify import verify
from passes.fuse_binarize_into_binary_output import FuseBinarizeIntoBinaryOutput
from tests.bnn_graphs import Builder, before_pass, zero_row_input
from tests.helpers import (
    names,
    output_names,
    run_graph,
    save,
)

C, H = 9, 7  # an odd channel count, and a kernel with zero padding at every border


def bireal_input(seed=0):
    return zero_row_input((2, C, H, H), seed)

# idiom -> the Binarize's value at 0 (ONNX Sign: 0, with a mask; Larq and QONNX: +1)
IDIOMS = {"sign": 0, "larq": 1, "bipolar": 1}


@pytest.mark.parametrize("idiom", list(IDIOMS))
def test_bireal_binarizes_fuse_into_the_layers(idiom):
    b = Builder(4)
    y = b.bireal("x", C, 3, idiom)
    model = b.model([("x", [2, C, H, H])], [(y, [2, C, H, H])])
    graph = before_pass(model, FuseBinarizeIntoBinaryOutput)
    x = bireal_input(2)
    layers = [n for n in list(graph.graph) if op_key(n) == "bnnc.BinaryConv"]
    packed = [o for n in list(graph.graph) if op_key(n) == "bnnc.Binarize" for o in names(n.outputs)]
    before = dict(zip([y] + packed, run_graph_values(graph, x, [y] + packed)))
    rec = run_pipeline(graph, [FuseBinarizeIntoBinaryOutput()])[0]
    # the first Binarize reads the graph input; the next two read layers and fuse
    assert rec.stats == {"fused": 2}
    assert [op_key(n) for n in list(graph.graph)].count("bnnc.Binarize") == 1
    zero = IDIOMS[idiom]
    for layer in layers[:2]:
        assert attrs_of(layer)["bits_zero"] == zero and len(layer.outputs) == (3 if zero == 0 else 2)
    after = dict(zip(before, run_graph_values(graph, x, list(before))))
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_every_packed_tensor_agrees_with_onnxruntime():
    b = Builder(5)
    y = b.bireal("x", C, 3)
    model = b.model([("x", [2, C, H, H])], [(y, [2, C, H, H])])
    with tempfile.TemporaryDirectory() as d:
        report = verify(save(model, d), {"x": bireal_input(3)})
    assert len(report.layers) == 3
    for lay in report.layers:
        assert lay.differing == 0, f"{lay.tensor}: {lay.differing} of {lay.bits} bits differ"


def run_graph_values(graph, x, wanted):
    """The values ``wanted`` of the graph run on x, through the bnnc runtime (run_graph returns
    graph outputs only, so the wanted values become outputs for the run)."""
    by_name = {v.name: v for n in graph.graph for v in n.outputs}
    outs = graph.graph.outputs
    n_saved = len(outs)
    outs.extend(by_name[w] for w in dict.fromkeys(wanted) if not by_name[w].is_graph_output())
    try:
        values = dict(zip(output_names(graph), run_graph(graph, {"x": x})))
    finally:
        while len(outs) > n_saved:
            outs.pop()
    return [values[n] for n in wanted]
