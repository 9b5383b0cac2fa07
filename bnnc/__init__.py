"""bnnc: a post-training compiler from ONNX binarized neural networks to a bit-packed runtime."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bnnc.dumps import finish_summary
from bnnc.graph import Graph
from bnnc.loader import load_model, parse_input_shapes
from bnnc.lower import lower
from bnnc.pipeline import Pass, PassRecord, run_pipeline
from runtime.artifact import write_artifact
from runtime.errors import BnncError

__version__ = "0.1.0"
__all__ = ["BnncError", "CompileResult", "compile", "compile_model", "default_output_path", "__version__"]


@dataclass
class CompileResult:
    path: str
    graph: Graph
    records: list[PassRecord]
    manifest: dict
    artifact_bytes: int


def default_output_path(onnx_path: str) -> str:
    stem, _ = os.path.splitext(onnx_path)
    return stem + ".bnn"


def compile_model(
    onnx_path: str,
    out_path: str | None = None,
    dump_dir: str | None = None,
    input_shapes: dict[str, list[int]] | Sequence[str] | None = None,
    passes: Sequence[Pass] | None = None,
    progress: Callable[[PassRecord], None] | None = None,
) -> CompileResult:
    """Compile ``onnx_path`` to an artifact and return everything the compiler learned."""
    from passes import default_pipeline

    if input_shapes is not None and not isinstance(input_shapes, dict):
        input_shapes = parse_input_shapes(list(input_shapes))
    out_path = out_path or default_output_path(onnx_path)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise BnncError(f"output directory '{out_dir}' does not exist")
    t0 = time.perf_counter()
    graph = load_model(onnx_path, input_shapes)
    records = run_pipeline(graph, default_pipeline() if passes is None else passes, dump_dir, progress)
    graph.metadata["bnnc.source_bytes"] = str(os.path.getsize(onnx_path))
    manifest, tensors = lower(graph, producer=f"bnnc {__version__}")
    manifest["source"] = os.path.basename(onnx_path)
    size = write_artifact(out_path, manifest, tensors)
    if dump_dir is not None:
        finish_summary(dump_dir, model=os.path.abspath(onnx_path), bnnc_version=__version__,
                       total_seconds=time.perf_counter() - t0, artifact=os.path.abspath(out_path),
                       artifact_bytes=size)
    return CompileResult(out_path, graph, records, manifest, size)


def compile(
    onnx_path: str,
    out_path: str | None = None,
    dump_dir: str | None = None,
    input_shapes: dict[str, list[int]] | Sequence[str] | None = None,
) -> str:
    """Compile ``onnx_path`` into a ``.bnn`` artifact and return its path."""
    return compile_model(onnx_path, out_path, dump_dir, input_shapes).path
