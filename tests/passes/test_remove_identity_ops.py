"""remove-identity-ops: no-op nodes disappear, real ones stay, graph output names survive."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from bnnc.pipeline import run_pipeline
from passes.remove_identity_ops import RemoveIdentityOps
from tests.helpers import (
    consts,
    load_graph,
    make_model,
    names,
    ort_run,
    output_names,
    run_graph,
)

F = np.float32


def _remove(model):
    graph = load_graph(model)
    rec = run_pipeline(graph, [RemoveIdentityOps()])[0]
    return graph, rec


def _same(graph, model, x):
    for a, b in zip(run_graph(graph, {"x": x}), ort_run(model, {"x": x}), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_kind_of_no_op_is_removed():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["b"], name="identity"),
        helper.make_node("Dropout", ["b"], ["c"], name="dropout"),
        helper.make_node("Cast", ["c"], ["d"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["d", "same_shape"], ["e"], name="reshape"),
        helper.make_node("Flatten", ["e"], ["f"], name="flatten", axis=1),
        helper.make_node("Transpose", ["f"], ["g"], name="transpose", perm=[0, 1]),
        helper.make_node("Pad", ["g", "zero_pads"], ["h"], name="pad", mode="constant"),
        helper.make_node("Expand", ["h", "same_shape"], ["i"], name="expand"),
        helper.make_node("Neg", ["i"], ["y"], name="neg"),
    ]
    inits = {"same_shape": np.array([2, 6], np.int64), "zero_pads": np.zeros(4, np.int64)}
    model = make_model(nodes, [("x", [2, 6])], [("y", [2, 6])], inits)
    graph, rec = _remove(model)
    assert [n.op_type for n in list(graph.graph)] == ["Relu", "Neg"]
    assert names(list(graph.graph)[1].inputs) == ["a"]
    assert sum(rec.stats.values()) == 8 and rec.stats["Pad"] == 1
    assert consts(graph) == {}  # the shape and pads tensors went with their nodes
    _same(graph, model, np.random.default_rng(0).standard_normal((2, 6)).astype(F))


def test_graph_output_names_are_kept():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Identity", ["a"], ["y"], name="identity"),
    ]
    model = make_model(nodes, [("x", [3])], [("y", [3])])
    graph, rec = _remove(model)
    assert [n.op_type for n in list(graph.graph)] == ["Relu"] and rec.stats == {"Identity": 1}
    assert output_names(graph) == ["y"] and names(list(graph.graph)[0].outputs) == ["y"]
    _same(graph, model, np.array([-1.0, 0.0, 2.0], F))


def test_identity_from_an_input_to_an_output_is_needed():
    model = make_model([helper.make_node("Identity", ["x"], ["y"], name="pass_through")], [("x", [3])], [("y", [3])])
    graph, rec = _remove(model)
    assert not rec.modified and [n.op_type for n in list(graph.graph)] == ["Identity"]


def test_ops_that_change_something_stay():
    nodes = [
        helper.make_node("Cast", ["x"], ["a"], name="cast", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["a"], ["b"], name="cast_back", to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["b", "new_shape"], ["c"], name="reshape"),
        helper.make_node("Transpose", ["c"], ["d"], name="transpose", perm=[1, 0]),
        helper.make_node("Pad", ["d", "pads"], ["e"], name="pad", mode="constant"),
        helper.make_node("Transpose", ["e"], ["y"], name="transpose_default"),
    ]
    inits = {"new_shape": np.array([3, 4], np.int64), "pads": np.array([0, 1, 0, 0], np.int64)}
    model = make_model(nodes, [("x", [2, 6])], [("y", [5, 4])], inits)
    graph, rec = _remove(model)
    assert not rec.modified and len(list(graph.graph)) == 6
    _same(graph, model, np.random.default_rng(1).standard_normal((2, 6)).astype(F))


def test_dropout_whose_mask_is_used_stays_with_a_reason():
    nodes = [
        helper.make_node("Dropout", ["x"], ["d", "mask"], name="dropout"),
        helper.make_node("Cast", ["mask"], ["m"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["d", "m"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [4])], [("y", [4])])
    graph, rec = _remove(model)
    assert [n.op_type for n in list(graph.graph)] == ["Dropout", "Cast", "Add"]
    assert rec.reasons == ["dropout: Dropout not removed: its mask output is used"]
    _same(graph, model, np.array([1.0, -2.0, 0.0, 3.0], F))
