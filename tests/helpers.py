"""Shared test utilities: build ONNX graphs, run them with onnxruntime and with bnnc."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto

import bnnc
from bnnc.builder import make_model  # noqa: F401  (the tests build models with it)
from bnnc.ir import const
from bnnc.ir_convert import to_proto
from bnnc.lower import lower
from runtime import InferenceSession
from runtime.artifact import write_artifact

# The shared corpus (../shared/corpus beside the repository). A clone alone has none: tests that
# need it skip and say so, except under BNNC_REQUIRE_SHARED=1 (set by .ci/run), where they run
# and fail, so CI can never skip them.
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir() and not os.environ.get("BNNC_REQUIRE_SHARED"),
    reason=f"the shared corpus is absent at {CORPUS} (CI requires it)",
)

F32 = TensorProto.FLOAT


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


def run_graph(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    """Execute an IR model as it stands (no passes): onnxruntime when every op is standard,
    otherwise the bnnc runtime. Used for before/after tests of single passes."""
    if all(n.domain in ("", "ai.onnx") for n in model.graph):
        return ort_run(to_proto(model), feeds)
    with tempfile.TemporaryDirectory() as d:
        manifest, tensors = lower(model, producer="test")
        path = os.path.join(d, "g.bnn")
        write_artifact(path, manifest, tensors)
        return InferenceSession(path).run(None, feeds)


def load_graph(model: onnx.ModelProto, input_shapes=None) -> ir.Model:
    """The IR model bnnc's loader makes of ``model`` (checked, shapes inferred)."""
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


# -- reading an IR model in tests -----------------------------------------------------------------
def nodes(model: ir.Model) -> list[ir.Node]:
    return list(model.graph)


def names(values) -> list[str]:
    """Value names, "" for an absent optional input."""
    return [v.name if v is not None else "" for v in values]


def consts(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: const(v) for k, v in model.graph.initializers.items()}


def producer(model: ir.Model, name: str) -> ir.Node | None:
    """The node that computes the value called ``name``."""
    return next((n for n in model.graph for v in n.outputs if v.name == name), None)


def output_names(model: ir.Model) -> list[str]:
    return [v.name for v in model.graph.outputs]


def op_counts(model: ir.Model) -> dict[str, int]:
    from bnnc.ir import op_counts as counts

    return counts(model.graph)


def serialized(model: ir.Model) -> list[bytes]:
    """Every node as bytes, to assert that a pass left the graph alone."""
    return [ir.serde.serialize_node(n).SerializeToString() for n in model.graph]


# -- the command line -------------------------------------------------------------------------------
def cli(*args) -> tuple[int, str, str]:
    """Run ``bnnc ARGS`` in-process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_cli_error(args, *needles) -> str:
    """``bnnc ARGS`` fails with exit code 2 and one ``error:`` line holding every needle."""
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
