"""``bnnc.compile``: load, run the pipeline, lower, write the artifact."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from bnnc.dumps import finish_summary
from bnnc.loader import load_model, parse_input_shapes
from bnnc.lower import lower
from bnnc.pipeline import Pass, PassRecord, run_pipeline
from runtime.artifact import write_artifact
from runtime.errors import BnncError

__version__ = "0.1.0"


@dataclass
class CompileResult:
    path: str
    model: ir.Model
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
    # the IR is a web of reference cycles (nodes <-> values) that grows with the graph: a cyclic
    # collection every few thousand allocations would rescan all of it (quadratic compile time)
    t0 = time.perf_counter()
    paused = gc.isenabled()
    gc.disable()
    try:
        model = load_model(onnx_path, input_shapes)
        records = run_pipeline(model, default_pipeline() if passes is None else passes, dump_dir, progress)
    finally:
        if paused:
            gc.enable()
    manifest, tensors = lower(model, producer=f"bnnc {__version__}",
                              metadata={"bnnc.source_bytes": str(os.path.getsize(onnx_path))})
    manifest["source"] = os.path.basename(onnx_path)
    size = write_artifact(out_path, manifest, tensors)
    if dump_dir is not None:
        finish_summary(dump_dir, model=os.path.abspath(onnx_path), bnnc_version=__version__,
                       total_seconds=time.perf_counter() - t0, artifact=os.path.abspath(out_path),
                       artifact_bytes=size)
    return CompileResult(out_path, model, records, manifest, size)


def compile(
    onnx_path: str,
    out_path: str | None = None,
    dump_dir: str | None = None,
    input_shapes: dict[str, list[int]] | Sequence[str] | None = None,
) -> str:
    """Compile ``onnx_path`` into a ``.bnn`` artifact and return its path."""
    return compile_model(onnx_path, out_path, dump_dir, input_shapes).path
