"""The float front of the pipeline (lower-qonnx-ops, fold-constants, remove-identity-ops) on every
real export of the acceptance corpus: the graph that comes out is plain ONNX with literal weights,
and onnxruntime running it still reproduces the corpus's expected outputs (for the QONNX cases
these came from qonnx's own executor, so this checks the lowering against qonnx on real models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnnc.ir_convert import to_proto
from bnnc.loader import load_model, read_model
from bnnc.pipeline import run_pipeline
from passes.fold_constants import FoldConstants
from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx
from passes.remove_identity_ops import RemoveIdentityOps
from tests.helpers import CORPUS, consts, needs_corpus, op_counts, ort_run

CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "model.onnx").is_file()) if CORPUS.is_dir() else []
WEIGHT_OPS = ("Sign", "ReduceMean", "Abs")


def _input_shapes(path: Path, x: np.ndarray) -> dict[str, list[int]] | None:
    """The batch of input.npy for models whose input shape is dynamic (tf2onnx)."""
    model = read_model(str(path))
    inits = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return {first.name: list(x.shape)}


@needs_corpus
@pytest.mark.parametrize("case", CASES)
def test_float_passes_on_corpus_model(case):
    folder = CORPUS / case
    x = np.load(folder / "input.npy")
    expected = np.load(folder / "expected.npy")
    graph = load_model(str(folder / "model.onnx"), _input_shapes(folder / "model.onnx", x))
    run_pipeline(graph, [LowerQonnxOpsToOnnx(), FoldConstants(), RemoveIdentityOps()])

    assert all(n.domain in ("", "ai.onnx") for n in list(graph.graph)), op_counts(graph)
    assert "Constant" not in op_counts(graph)
    on_consts = [n.name for n in graph.graph if n.inputs and all(v is None or v.const_value is not None for v in n.inputs)]
    assert on_consts == [], f"nodes computed from constants only: {on_consts}"
    for n in list(graph.graph):
        if n.op_type in WEIGHT_OPS:
            assert n.inputs[0] not in consts(graph), f"{n.name} ({n.op_type}) still reads a raw weight"

    out = ort_run(to_proto(graph), {graph.graph.inputs[0].name: x})[0]
    assert out.shape == expected.shape
    assert np.array_equal(out.argmax(-1), expected.argmax(-1)), "argmax differs"
    err = float(np.max(np.abs(out.astype(np.float64) - expected)))
    assert err <= 1e-3 * float(np.max(np.abs(expected))), f"max abs error {err:.3g}"
