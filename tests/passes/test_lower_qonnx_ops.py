"""lower-qonnx-ops: structure of the lowered graph, names, tags, reasons; execution before/after."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc import qonnx
from bnnc.ir import const
from bnnc.pipeline import run_pipeline
from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx
from tests.helpers import (
    load_graph,
    make_model,
    op_counts,
    output_names,
    run_graph,
)

QD = "qonnx.custom_op.general"
F = np.float32


def _lower(model):
    graph = load_graph(model)
    rec = run_pipeline(graph, [LowerQonnxOpsToOnnx()])[0]
    return graph, rec


def _bnn_layer(domain=QD):
    """x -> BipolarQuant -> Gemm(BipolarQuant(W)) -> Quant(8 bit) = y, y a graph output."""
    rng = np.random.default_rng(0)
    inits = {
        "one": np.array([1.0], F), "w": rng.standard_normal((6, 5)).astype(F),
        "qs": np.array(0.125, F), "qz": np.array(0.0, F), "qb": np.array(8.0, F),
    }
    nodes = [
        helper.make_node("BipolarQuant", ["x", "one"], ["xb"], name="act_quant", domain=domain),
        helper.make_node("BipolarQuant", ["w", "one"], ["wb"], name="weight_quant", domain=domain),
        helper.make_node("Gemm", ["xb", "wb"], ["g"], name="gemm", transB=1),
        helper.make_node("Quant", ["g", "qs", "qz", "qb"], ["y"], name="out_quant", domain=domain,
                         signed=1, narrow=0, rounding_mode="ROUND"),
    ]
    return make_model(nodes, [("x", [3, 5])], [("y", [3, 6])], inits, extra_opsets={domain: 1})


@pytest.mark.parametrize("domain", [QD, "finn.custom_op.general"])
def test_every_qonnx_node_becomes_standard_ops(domain):
    model = _bnn_layer(domain)
    x = np.random.default_rng(1).standard_normal((3, 5)).astype(F)
    x[0, 0] = 0.0
    expected = qonnx.run_reference(model, {"x": x})[0]
    graph, rec = _lower(model)
    assert rec.modified and rec.stats == {"BipolarQuant": 2, "Quant": 1}
    assert all(n.domain in ("", "ai.onnx") for n in list(graph.graph))
    assert output_names(graph) == ["y"] and graph.graph.outputs[0].producer().op_type == "Mul"
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], expected)


def test_created_nodes_are_named_and_tagged():
    graph, _ = _lower(_bnn_layer())
    created = [n for n in list(graph.graph) if n.op_type != "Gemm"]
    assert created
    names = [n.name for n in list(graph.graph)]
    assert len(set(names)) == len(names)
    for n in created:
        assert n.name.startswith(("act_quant", "weight_quant", "out_quant"))
        assert n.metadata_props["bnnc.pass"] == "lower-qonnx-ops"


def test_bipolar_scale_is_a_constant_of_the_input_dtype():
    graph, _ = _lower(_bnn_layer())
    where = next(v for n in graph.graph for v in n.outputs if v.name == "xb").producer()
    assert where.op_type == "Where"
    pos, neg = const(where.inputs[1]), const(where.inputs[2])
    assert pos.dtype == np.float32 and neg.dtype == np.float32
    np.testing.assert_array_equal(pos, -neg)


def test_non_constant_scale_uses_mul():
    node = helper.make_node("BipolarQuant", ["x", "s"], ["y"], name="bq", domain=QD)
    model = make_model([node], [("x", [2, 3]), ("s", [1, 3])], [("y", [2, 3])], extra_opsets={QD: 1})
    graph, rec = _lower(model)
    assert rec.stats == {"BipolarQuant": 1} and "Mul" in op_counts(graph)
    feeds = {"x": np.array([[0.0, -1.0, 2.0], [-0.5, 0.5, 0.0]], F), "s": np.array([[1.0, 2.0, 3.0]], F)}
    np.testing.assert_array_equal(run_graph(graph, feeds)[0], qonnx.run_reference(model, feeds)[0])


def test_quant_with_non_constant_bitwidth_stays_with_a_reason():
    node = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], name="dyn_quant", domain=QD, signed=1, narrow=0)
    model = make_model([node], [("x", [2, 3]), ("b", [])], [("y", [2, 3])],
                       {"s": np.array(1.0, F), "z": np.array(0.0, F)}, extra_opsets={QD: 1})
    graph, rec = _lower(model)
    assert not rec.modified and rec.stats == {}
    assert [n.op_type for n in list(graph.graph)] == ["Quant"]
    assert rec.reasons == ["dyn_quant: Quant not lowered: bit width is not a constant"]


def test_unknown_rounding_mode_stays_with_a_reason():
    node = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], name="odd_quant", domain=QD,
                            signed=1, narrow=0, rounding_mode="STOCHASTIC")
    inits = {"s": np.array(1.0, F), "z": np.array(0.0, F), "b": np.array(4.0, F)}
    model = make_model([node], [("x", [4])], [("y", [4])], inits, extra_opsets={QD: 1})
    graph, rec = _lower(model)
    assert list(graph.graph)[0].op_type == "Quant"
    assert "unknown rounding mode 'STOCHASTIC'" in rec.reasons[0]
