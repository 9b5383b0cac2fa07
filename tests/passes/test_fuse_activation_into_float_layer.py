"""fuse-activation-into-float-layer: layer + activation becomes one bnnc.Fused* node, or one
binary-weight layer with an activation (run by the runtime and by the op references)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc.ir import attrs_of, op_key
from bnnc.layers import layer_of
from bnnc.pipeline import run_pipeline
from passes.fuse_activation_into_float_layer import FuseActivationIntoFloatLayer
from tests.bnn_graphs import before_pass
from tests.helpers import (
    assert_close,
    load_graph,
    make_model,
    names,
    ort_run,
    output_names,
    run_graph,
)
from tests.reference_run import run_reference

F = np.float32
F32 = np.finfo(np.float32)


def _fuse(model):
    graph = load_graph(model)
    rec = run_pipeline(graph, [FuseActivationIntoFloatLayer()])[0]
    return graph, rec


def _act(op, inp="c", out="y", extra_inputs=(), **attrs):
    return helper.make_node(op, [inp, *extra_inputs], [out], name=f"act_{op.lower()}", **attrs)


CASES = [
    ("Relu", {}, (), {}, []),
    ("LeakyRelu", {"alpha": 0.2}, (), {}, [0.2]),
    ("LeakyRelu", {}, (), {}, [0.01]),
    ("Clip", {}, ("lo", "hi"), {"lo": np.array(-0.5, F), "hi": np.array(0.75, F)}, [-0.5, 0.75]),
    ("Clip", {}, ("lo",), {"lo": np.array(0.0, F)}, [0.0, float(F32.max)]),
    ("Clip", {}, ("", "hi"), {"hi": np.array(1.0, F)}, [float(F32.min), 1.0]),
    ("Sigmoid", {}, (), {}, []),
    ("Tanh", {}, (), {}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, (), {}, [0.3, 0.4]),
]


@pytest.mark.parametrize("act,attrs,extra,inits,params", CASES)
def test_conv_and_activation_fuse(act, attrs, extra, inits, params):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(F), "b": rng.standard_normal(4).astype(F), **inits}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             _act(act, extra_inputs=extra, **attrs)]
    model = make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 3, 3])], inits)
    graph, rec = _fuse(model)
    assert [op_key(n) for n in list(graph.graph)] == ["bnnc.FusedConv"]
    fused = list(graph.graph)[0]
    assert fused.name == "conv"  # the layer keeps its name
    a = attrs_of(fused)
    assert a["activation"] == act and a["strides"] == [2, 2] and a["pads"] == [1, 1, 1, 1]
    np.testing.assert_allclose(a.get("activation_params", []), params, rtol=1e-6)
    assert names(fused.inputs) == ["x", "w", "b"] and names(fused.outputs) == ["y"] and output_names(graph) == ["y"]
    assert fused.metadata_props["bnnc.pass"] == "fuse-activation-into-float-layer"
    assert rec.stats == {f"Conv+{act}": 1}
    x = rng.standard_normal((1, 3, 6, 6)).astype(F)
    assert_close(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0], rel=1e-5)


def test_gemm_and_matmul_fuse():
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((6, 5)).astype(F), "c1": rng.standard_normal(6).astype(F),
             "w2": rng.standard_normal((6, 4)).astype(F)}
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "c1"], ["g"], name="gemm", transB=1, alpha=0.5),
        _act("Relu", "g", "r"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="matmul"),
        _act("Tanh", "m", "y"),
    ]
    model = make_model(nodes, [("x", [3, 5])], [("y", [3, 4])], inits)
    graph, rec = _fuse(model)
    assert [op_key(n) for n in list(graph.graph)] == ["bnnc.FusedGemm", "bnnc.FusedMatMul"]
    assert attrs_of(list(graph.graph)[0])["transB"] == 1 and attrs_of(list(graph.graph)[0])["alpha"] == 0.5
    x = rng.standard_normal((3, 5)).astype(F)
    assert_close(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0], rel=1e-5)


def test_layer_read_twice_is_not_fused():
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        _act("Relu"),
        helper.make_node("Add", ["y", "c"], ["z"], name="add"),
    ]
    model = make_model(nodes, [("x", [1, 2, 3, 3])], [("z", [1, 2, 3, 3])], {"w": rng.standard_normal((2, 2, 1, 1)).astype(F)})
    graph, rec = _fuse(model)
    assert not rec.modified and [n.op_type for n in list(graph.graph)] == ["Conv", "Relu", "Add"]


def test_clip_with_a_computed_bound_stays_with_a_reason():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["c"], name="gemm"),
        helper.make_node("ReduceMax", ["x"], ["hi"], name="max", keepdims=0),
        _act("Clip", extra_inputs=("", "hi")),
    ]
    model = make_model(nodes, [("x", [2, 3])], [("y", [2, 4])], {"w": rng.standard_normal((3, 4)).astype(F)})
    graph, rec = _fuse(model)
    assert not rec.modified
    assert rec.reasons == ["gemm: activation not fused: Clip bounds are not constant scalars"]


def test_layer_output_that_is_a_graph_output_is_not_fused():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["c"], name="matmul"), _act("Sigmoid")]
    model = make_model(nodes, [("x", [2, 3])], [("c", [2, 4]), ("y", [2, 4])], {"w": rng.standard_normal((3, 4)).astype(F)})
    graph, rec = _fuse(model)
    assert not rec.modified and "graph output" in rec.reasons[0]


def _binary_weight_model(rng, conv_acts=("Relu",)):
    """Conv (+-alpha weights) -> conv_acts -> Flatten -> Gemm (+-alpha weights) -> Tanh: both
    layers become binary-weight layers (float activations)."""
    w = (np.where(rng.standard_normal((6, 3, 3, 3)) >= 0, 1.0, -1.0) * rng.uniform(0.1, 1, (6, 1, 1, 1))).astype(F)
    g = (np.where(rng.standard_normal((4, 6 * 5 * 4)) >= 0, 1.0, -1.0) * rng.uniform(0.1, 1, (4, 1))).astype(F)
    acts = [helper.make_node(a, [f"a{i}"], [f"a{i + 1}"], name=f"act{i}") for i, a in enumerate(conv_acts)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a0"], name="conv", pads=[1, 1, 1, 1]), *acts,
             helper.make_node("Flatten", [f"a{len(acts)}"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g", "gb"], ["d"], name="gemm", transB=1),
             _act("Tanh", "d", "y")]
    inits = {"w": w, "b": rng.standard_normal(6).astype(F), "g": g, "gb": rng.standard_normal(4).astype(F)}
    return make_model(nodes, [("x", [2, 3, 5, 4])], [("y", [2, 4])], inits)


def test_binary_weight_layers_take_their_activation():
    """A binary-weight conv and dense keep their op and take the activation as attributes; the
    op references (tests/reference_run.py) and the runtime compute what onnxruntime computes on
    the source graph, before and after the pass."""
    rng = np.random.default_rng(5)
    model = _binary_weight_model(rng)
    graph = before_pass(model, FuseActivationIntoFloatLayer)
    x = rng.standard_normal((2, 3, 5, 4)).astype(F)
    before = run_reference(graph, {"x": x})[0]
    rec = run_pipeline(graph, [FuseActivationIntoFloatLayer()])[0]
    assert [op_key(n) for n in list(graph.graph)] == ["bnnc.BinaryWeightConv", "Flatten", "bnnc.BinaryWeightDense"]
    conv, _, dense = list(graph.graph)
    assert (conv.name, dense.name) == ("conv", "gemm")
    assert attrs_of(conv)["activation"] == "Relu" and attrs_of(dense)["activation"] == "Tanh"
    assert layer_of(conv).mode == layer_of(dense).mode == "binary-weight"  # the layer table still says so
    assert rec.stats == {"bnnc.BinaryWeightConv+Relu": 1, "bnnc.BinaryWeightDense+Tanh": 1}
    (expect,) = ort_run(model, {"x": x})
    assert_close(before, expect, rel=1e-5)
    assert_close(run_reference(graph, {"x": x})[0], expect, rel=1e-5)
    assert_close(run_graph(graph, {"x": x})[0], expect, rel=1e-5)


def test_binary_weight_layer_takes_one_activation():
    """A second activation after a fused binary-weight layer stays a node of its own, however
    often the pass runs."""
    rng = np.random.default_rng(6)
    model = _binary_weight_model(rng, ("LeakyRelu", "Sigmoid"))
    graph = before_pass(model, FuseActivationIntoFloatLayer)
    run_pipeline(graph, [FuseActivationIntoFloatLayer()])
    rec = run_pipeline(graph, [FuseActivationIntoFloatLayer()])[0]
    assert not rec.modified
    assert [op_key(n) for n in list(graph.graph)][:2] == ["bnnc.BinaryWeightConv", "Sigmoid"]
    np.testing.assert_allclose(attrs_of(list(graph.graph)[0])["activation_params"], [0.01])
    x = rng.standard_normal((2, 3, 5, 4)).astype(F)
    assert_close(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0], rel=1e-5)
