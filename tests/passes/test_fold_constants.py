"""fold-constants: weights computed from weights, Constant nodes and shape arithmetic fold away."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnnc.ir import const
from bnnc.ir_convert import from_proto
from bnnc.pipeline import run_pipeline
from passes.fold_constants import MAX_ELEMENTS, FoldConstants
from tests.helpers import (
    assert_close,
    consts,
    load_graph,
    make_model,
    op_counts,
    ort_run,
    run_graph,
)

F = np.float32
QD = "qonnx.custom_op.general"


def _fold(model):
    graph = load_graph(model)
    rec = run_pipeline(graph, [FoldConstants()])[0]
    return graph, rec


def _xnor_conv():
    """Conv(x, Mul(Sign(W), ReduceMean(Abs(W)))) with the alpha per output channel (XNOR-Net)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(F)
    w[0, 0, 0, 0] = 0.0  # Sign(0) = 0 must survive folding
    nodes = [
        helper.make_node("Abs", ["w"], ["wa"], name="abs"),
        helper.make_node("ReduceMean", ["wa"], ["alpha"], name="mean", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sign", ["w"], ["ws"], name="sign"),
        helper.make_node("Mul", ["ws", "alpha"], ["wq"], name="mul"),
        helper.make_node("Conv", ["x", "wq"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])], {"w": w}, opset=13)


def test_xnor_weight_expression_becomes_one_constant():
    model = _xnor_conv()
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(F)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Conv": 1}
    assert rec.stats["folded"] == 4 and rec.modified
    w = const(list(graph.graph)[0].inputs[1])
    # bit for bit what onnxruntime computes for the same expression
    sub = make_model(model.graph.node[:4], [("w", [4, 3, 3, 3])], [("wq", [4, 3, 3, 3])], opset=13)
    w_ort = ort_run(sub, {"w": numpy_helper.to_array(model.graph.initializer[0])})[0]
    np.testing.assert_array_equal(w, w_ort)
    assert w[0, 0, 0, 0] == 0.0
    assert set(consts(graph)) == {list(graph.graph)[0].inputs[1].name}  # the raw W is pruned
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_constant_nodes_and_transposed_weights_fold():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 4)).astype(F)
    nodes = [
        helper.make_node("Constant", [], ["b"], name="bias_const", value=numpy_helper.from_array(np.arange(5, dtype=F))),
        helper.make_node("Constant", [], ["k"], name="k_const", value_float=2.0),
        helper.make_node("Transpose", ["w"], ["wt"], name="transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "b"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "k"], ["y"], name="scale"),
    ]
    model = make_model(nodes, [("x", [2, 4])], [("y", [2, 5])], {"w": w})
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Add": 1, "MatMul": 1, "Mul": 1}
    assert rec.stats["constants"] == 2 and rec.stats["folded"] == 1
    np.testing.assert_array_equal(const(list(graph.graph)[0].inputs[1]), w.T)
    x = rng.standard_normal((2, 4)).astype(F)
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_shape_arithmetic_folds_to_a_constant_reshape():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("Size", ["x"], ["size"], name="size"),
        helper.make_node("Cast", ["size"], ["size_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Div", ["r", "size_f"], ["y"], name="div"),
    ]
    inits = {"zero": np.array(0, np.int64), "zero_axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    model = make_model(nodes, [("x", [2, 3, 4])], [("y", [2, 12])], inits)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Div": 1, "Reshape": 1}
    assert rec.stats["shapes"] == 2
    np.testing.assert_array_equal(const(list(graph.graph)[0].inputs[1]), [2, -1])
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(F)
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_qonnx_ops_on_constants_fold_with_the_reference():
    w = np.array([[0.0, -1.0], [2.0, -0.0]], F)
    nodes = [
        helper.make_node("BipolarQuant", ["w", "s"], ["wb"], name="weight_quant", domain=QD),
        helper.make_node("MatMul", ["x", "wb"], ["y"], name="matmul"),
    ]
    model = make_model(nodes, [("x", [1, 2])], [("y", [1, 2])], {"w": w, "s": np.array(0.5, F)},
                       extra_opsets={QD: 1})
    graph, rec = _fold(model)
    assert op_counts(graph) == {"MatMul": 1} and rec.stats["qonnx"] == 1
    np.testing.assert_array_equal(const(list(graph.graph)[0].inputs[1]), [[0.5, -0.5], [0.5, 0.5]])


def test_values_that_depend_on_inputs_stay():
    nodes = [
        helper.make_node("Sign", ["x"], ["s"], name="sign"),
        helper.make_node("Mul", ["s", "k"], ["y"], name="mul"),
    ]
    model = make_model(nodes, [("x", [3])], [("y", [3])], {"k": np.array(2.0, F), "unused": np.ones(3, F)})
    graph, rec = _fold(model)
    assert [n.op_type for n in list(graph.graph)] == ["Sign", "Mul"]
    assert "folded" not in rec.stats
    assert "unused" not in consts(graph) and "k" in consts(graph)


def test_huge_outputs_are_not_folded():
    side = int(np.sqrt(MAX_ELEMENTS)) + 8
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="big_fill",
                         value=numpy_helper.from_array(np.array([1.0], F))),
        helper.make_node("ReduceMax", ["big"], ["m"], name="max", keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [2])], [("y", [2])], {"shape": np.array([side, side], np.int64)})
    graph, rec = _fold(model)
    assert [n.op_type for n in list(graph.graph)] == ["ConstantOfShape", "ReduceMax", "Add"]
    assert any(r.startswith("big_fill: ConstantOfShape not folded: output 'big' would have") for r in rec.reasons)


def test_a_graph_output_computed_from_constants_is_kept():
    nodes = [
        helper.make_node("Neg", ["k"], ["y"], name="neg"),
        helper.make_node("Add", ["x", "k"], ["z"], name="add"),
    ]
    model = make_model(nodes, [("x", [2])], [("y", [2]), ("z", [2])], {"k": np.array([1.0, 2.0], F)})
    graph, _ = _fold(model)
    assert [n.op_type for n in list(graph.graph)] == ["Neg", "Add"]
    x = np.array([3.0, 4.0], F)
    for a, b in zip(run_graph(graph, {"x": x}), ort_run(model, {"x": x}), strict=True):
        assert_close(a, b)


def test_a_node_onnxruntime_cannot_evaluate_stays_and_the_rest_folds():
    # built without the loader, which would reject Mod for lack of a runtime kernel
    nodes = [
        helper.make_node("Neg", ["w"], ["wn"], name="neg"),
        helper.make_node("Mod", ["wn", "k"], ["wm"], name="float_mod", fmod=0),  # invalid: fmod=0 on floats
        helper.make_node("Abs", ["w"], ["wa"], name="abs"),
        helper.make_node("Add", ["x", "wm"], ["a"], name="add"),
        helper.make_node("Add", ["a", "wa"], ["y"], name="add2"),
    ]
    model = make_model(nodes, [("x", [3])], [("y", [3])], {"w": np.array([1, -2, 3], F), "k": np.full(3, 2, F)})
    graph = from_proto(onnx.shape_inference.infer_shapes(model))
    rec = run_pipeline(graph, [FoldConstants()])[0]
    assert [n.op_type for n in list(graph.graph)] == ["Mod", "Add", "Add"] and rec.stats["folded"] == 2
    np.testing.assert_array_equal(consts(graph)["wn"], [-1, 2, -3])
    np.testing.assert_array_equal(consts(graph)["wa"], [1, 2, 3])
    assert len(rec.reasons) == 1 and rec.reasons[0].startswith("float_mod: Mod on constants not folded: onnxruntime failed")
