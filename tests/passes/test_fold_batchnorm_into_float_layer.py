"""fold-batchnorm-into-float-layer: BN after float Conv/Gemm/MatMul goes into the weights and bias."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc.ir import attrs_of
from bnnc.pipeline import run_pipeline
from passes.fold_batchnorm_into_float_layer import FoldBatchNormIntoFloatLayer
from tests.helpers import (
    assert_close,
    load_graph,
    make_model,
    names,
    op_counts,
    ort_run,
    run_graph,
)

F = np.float32


def _bn_params(rng, c, prefix="bn"):
    gamma = rng.standard_normal(c).astype(F)  # negative gammas flip channels
    return {
        f"{prefix}_gamma": gamma, f"{prefix}_beta": rng.standard_normal(c).astype(F),
        f"{prefix}_mean": rng.standard_normal(c).astype(F), f"{prefix}_var": (rng.random(c) + 0.2).astype(F),
    }


def _bn(inp, out, prefix="bn", eps=1e-3):
    return helper.make_node("BatchNormalization", [inp] + [f"{prefix}_{k}" for k in ("gamma", "beta", "mean", "var")],
                            [out], name=prefix, epsilon=eps)


def _fold(model):
    graph = load_graph(model)
    rec = run_pipeline(graph, [FoldBatchNormIntoFloatLayer()])[0]
    return graph, rec


def _check(graph, model, x):
    assert_close(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0], rel=1e-5)


@pytest.mark.parametrize("bias,group", [(True, 1), (False, 1), (False, 4)])
def test_conv_batchnorm_becomes_one_conv(bias, group):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((8, 4 // group, 3, 3)).astype(F), **_bn_params(rng, 8)}
    conv_in = ["x", "w"]
    if bias:
        inits["b"] = rng.standard_normal(8).astype(F)
        conv_in.append("b")
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", pads=[1, 1, 1, 1], group=group), _bn("c", "y")]
    model = make_model(nodes, [("x", [2, 4, 5, 5])], [("y", [2, 8, 5, 5])], inits)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Conv": 1} and rec.stats == {"Conv": 1}
    conv = list(graph.graph)[0]
    assert conv.name == "conv" and names(conv.outputs) == ["y"] and len(conv.inputs) == 3
    assert conv.metadata_props["bnnc.pass"] == "fold-batchnorm-into-float-layer"
    assert attrs_of(conv)["group"] == group
    _check(graph, model, rng.standard_normal((2, 4, 5, 5)).astype(F))


@pytest.mark.parametrize("trans_b,with_c", [(1, True), (0, False), (0, True)])
def test_gemm_batchnorm_folds_alpha_and_beta(trans_b, with_c):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5) if trans_b else (5, 6)).astype(F)
    inits = {"w": w, **_bn_params(rng, 6)}
    gemm_in = ["x", "w"]
    if with_c:
        inits["c"] = rng.standard_normal(6).astype(F)
        gemm_in.append("c")
    gemm = helper.make_node("Gemm", gemm_in, ["g"], name="gemm", transB=trans_b, alpha=0.5, beta=2.0)
    model = make_model([gemm, _bn("g", "y")], [("x", [3, 5])], [("y", [3, 6])], inits)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Gemm": 1}
    _check(graph, model, rng.standard_normal((3, 5)).astype(F))


def test_matmul_with_constant_weights_becomes_gemm():
    rng = np.random.default_rng(2)
    inits = {"w": rng.standard_normal((5, 7)).astype(F), **_bn_params(rng, 7)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"), _bn("m", "y")]
    model = make_model(nodes, [("x", [4, 5])], [("y", [4, 7])], inits)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"Gemm": 1} and rec.stats == {"MatMul": 1}
    _check(graph, model, rng.standard_normal((4, 5)).astype(F))


def test_conv_output_read_twice_is_not_folded():
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((4, 4, 1, 1)).astype(F), **_bn_params(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        _bn("c", "n"),
        helper.make_node("Add", ["n", "c"], ["y"], name="residual"),
    ]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3])], inits)
    graph, rec = _fold(model)
    assert not rec.modified and op_counts(graph)["BatchNormalization"] == 1
    assert rec.reasons == ["bn: BatchNormalization not folded: Conv output has 2 consumers"]
    _check(graph, model, rng.standard_normal((1, 4, 3, 3)).astype(F))


def test_non_constant_weights_are_not_folded():
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "y")]
    model = make_model(nodes, [("x", [1, 2, 3, 3]), ("w", [3, 2, 1, 1])], [("y", [1, 3, 3, 3])], _bn_params(rng, 3))
    graph, rec = _fold(model)
    assert op_counts(graph) == {"BatchNormalization": 1, "Conv": 1}
    assert rec.reasons == ["bn: BatchNormalization not folded: Conv weights are not constant"]


def test_matmul_with_rank_3_output_is_not_folded():
    rng = np.random.default_rng(5)
    inits = {"w": rng.standard_normal((5, 4)).astype(F), **_bn_params(rng, 3)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"), _bn("m", "y")]
    model = make_model(nodes, [("x", [2, 3, 5])], [("y", [2, 3, 4])], inits)
    graph, rec = _fold(model)
    assert op_counts(graph) == {"BatchNormalization": 1, "MatMul": 1}
    assert "MatMul is not [M, K] x [K, N]" in rec.reasons[0]
    _check(graph, model, rng.standard_normal((2, 3, 5)).astype(F))


def test_batchnorm_after_other_ops_is_left_alone():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), _bn("r", "y")]
    model = make_model(nodes, [("x", [1, 3, 2, 2])], [("y", [1, 3, 2, 2])], _bn_params(rng, 3))
    graph, rec = _fold(model)
    assert not rec.modified and rec.reasons == []
