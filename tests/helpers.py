"""Shared test utilities: build ONNX graphs, run them with onnxruntime and with bnnc."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import bnnc
from bnnc.graph import Graph
from bnnc.lower import lower
from runtime import InferenceSession
from runtime.artifact import write_artifact

F32 = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=None, opset=17, extra_opsets=None) -> onnx.ModelProto:
    """Build a checked model. ``inputs``/``outputs`` are (name, shape) or (name, shape, elem_type);
    ``inits`` maps names to numpy arrays."""

    def vi(spec):
        name, shape, *t = spec
        return helper.make_tensor_value_info(name, t[0] if t else F32, shape)

    graph = helper.make_graph(
        nodes, "test", [vi(i) for i in inputs], [vi(o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if any(len(o) > 1 and o[1] is None for o in outputs):  # let ONNX fill in unknown output shapes
        model = onnx.shape_inference.infer_shapes(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict, threads: int = 1) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def save(model: onnx.ModelProto, directory: str, name: str = "model.onnx") -> str:
    path = os.path.join(directory, name)
    onnx.save(model, path)
    return path


def bnnc_run(model: onnx.ModelProto, feeds: dict, passes=None, threads: int | None = None, input_shapes=None):
    """Compile ``model`` with bnnc (default pipeline, or ``passes``) and run it; return outputs."""
    with tempfile.TemporaryDirectory() as d:
        res = bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=passes, input_shapes=input_shapes)
        sess = InferenceSession(res.path, threads=threads)
        return sess.run(None, feeds)


def run_graph(graph: Graph, feeds: dict) -> list[np.ndarray]:
    """Execute a Graph as it stands (no passes): onnxruntime when every op is standard,
    otherwise the bnnc runtime. Used for before/after tests of single passes."""
    if all(n.domain in ("", "ai.onnx") for n in graph.nodes):
        return ort_run(graph.to_model(), feeds)
    with tempfile.TemporaryDirectory() as d:
        manifest, tensors = lower(graph, producer="test")
        path = os.path.join(d, "g.bnn")
        write_artifact(path, manifest, tensors)
        return InferenceSession(path).run(None, feeds)


def load_graph(model: onnx.ModelProto, input_shapes=None) -> Graph:
    """The Graph bnnc's loader makes of ``model`` (checked, shapes inferred)."""
    from bnnc.loader import load_model

    with tempfile.TemporaryDirectory() as d:
        return load_model(save(model, d), input_shapes)


def assert_close(actual, expected, rel=1e-4):
    """Outputs agree within ``rel`` of the largest expected magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(actual.astype(np.float64) - expected))) if expected.size else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"
