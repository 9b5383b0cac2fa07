"""Shared helpers of the float-kernel tests: one ONNX node (or a few) run by onnxruntime and by
the bnnc runtime with no passes, so the kernel itself is what is compared."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper

from bnnc.ir import name_nodes
from bnnc.ir_convert import from_proto
from bnnc.lower import lower
from runtime import InferenceSession
from runtime.artifact import write_artifact
from tests.helpers import assert_close, bnnc_run, make_model, ort_run

RNG_SEED = 1234


def rng(salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + salt)


def randn(*shape, salt: int = 0) -> np.ndarray:
    return rng(salt).standard_normal(shape).astype(np.float32)


def build(nodes, feeds: dict, inits: dict | None = None, opset: int = 17) -> onnx.ModelProto:
    """A model whose inputs are ``feeds`` (shapes and types from the arrays) and whose outputs
    are the last node's outputs, typed by ONNX shape inference."""
    inputs = [(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in feeds.items()]
    outputs = [(o, None, 0) for o in nodes[-1].output if o]
    model = make_model(nodes, inputs, outputs, inits, opset=opset)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def compare(actual, expected, rel: float = 1e-4) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        if e.dtype.kind == "f":
            finite = np.isfinite(e)
            # nan and +-inf must come out where onnxruntime gives them, and nowhere else
            np.testing.assert_array_equal(np.where(finite, 0, a), np.where(finite, 0, e))
            assert_close(np.where(finite, a, 0), np.where(finite, e, 0), rel)
        else:
            np.testing.assert_array_equal(a, e)


def check(nodes, feeds: dict, inits: dict | None = None, opset: int = 17, rel: float = 1e-4):
    """Run ``nodes`` with onnxruntime and with bnnc (no passes) and compare every output."""
    if not isinstance(nodes, list):
        nodes = [nodes]
    model = build(nodes, feeds, inits, opset)
    expected = ort_run(model, feeds)
    actual = bnnc_run(model, feeds, passes=[])
    compare(actual, expected, rel)
    return actual


def run_lowered(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """Lower ``model`` exactly as written (no loader: no opset conversion, no folding) and run
    it with the bnnc runtime; for attribute forms of old opsets that the loader would convert."""
    graph = from_proto(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    name_nodes(graph.graph)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.bnn")
        write_artifact(path, *lower(graph, producer="test"))
        return InferenceSession(path).run(None, feeds)


def check_lowered(nodes, feeds: dict, inits: dict | None = None, opset: int = 17, rel: float = 1e-4):
    """``check`` for a model lowered as written (see ``run_lowered``)."""
    if not isinstance(nodes, list):
        nodes = [nodes]
    model = build(nodes, feeds, inits, opset)
    compare(run_lowered(model, feeds), ort_run(model, feeds), rel)
