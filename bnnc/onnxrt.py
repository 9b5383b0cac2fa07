"""The one way bnnc runs ONNX in onnxruntime: the graph as written, on the CPU.

Graph optimizations are off everywhere bnnc asks onnxruntime for a reference (threshold
tabulation, QONNX folding, verify): onnxruntime's fusions (Conv+BatchNormalization) change the
arithmetic, and bnnc must match the graph's own arithmetic. ``bnnc bench`` times onnxruntime as
users run it, optimizations on. Its log shows errors only (the
warnings about unused initializers are noise here); with more than one thread its pool threads
spin-wait inside a run, as users run it, but stop at the end of each run
(``session.force_spinning_stop``): spinning on would starve bnnc's threads on a small machine.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort

from runtime.errors import BnncError


def session(model: onnx.ModelProto | bytes, threads: int = 1, what: str = "the model", log_level: int = 3,
            optimize: bool = False) -> ort.InferenceSession:
    """An onnxruntime session of ``model``; a model it cannot load is a BnncError naming ``what``.
    ``optimize`` turns onnxruntime's graph optimizations back on: for timing it as a competitor
    (``bnnc bench``), never for a reference."""
    so = ort.SessionOptions()
    so.log_severity_level = log_level
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads > 1:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types are not public API
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BnncError(f"onnxruntime cannot run {what}: {first}") from e
