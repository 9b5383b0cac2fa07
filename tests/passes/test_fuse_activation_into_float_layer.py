"""fuse-activation-into-float-layer: layer + activation becomes one bnnc.Fused* node (run by the runtime)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc.ir import attrs_of, op_key
from bnnc.pipeline import run_pipeline
from passes.fuse_activation_into_float_layer import FuseActivationIntoFloatLayer
from tests.helpers import (
    assert_close,
    load_graph,
    make_model,
    names,
    ort_run,
    output_names,
    run_graph,
)

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
