"""``bnnc verify``: compile a model, run it next to onnxruntime, and say where they differ.

onnxruntime runs the input model as written (graph optimizations off, since its Conv+BatchNorm
fusion changes the arithmetic; QONNX nodes lowered to standard ONNX first, since onnxruntime
cannot load them) with every binarized tensor added as an output. bnnc runs the artifact and
keeps the same tensors as bits. Per binary layer the input bits are compared with onnxruntime's
sign of the same pre-sign tensor; a differing bit whose pre-sign value is within ``NEAR_TIE`` of
zero (relative to the tensor's largest magnitude) is a near-tie flip: the float graph rounds such
values either way, bnnc's integer result is the exact one (DESIGN.md). The verdict is on the
outputs: argmax equal for every sample and max error within tolerance.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from bnnc.graph import Graph
from bnnc.layers import bit_tensors
from bnnc.loader import load_model
from runtime import InferenceSession
from runtime.bitpack import unpack_activation
from runtime.errors import BnncError

NEAR_TIE = 1e-5


@dataclass
class LayerBits:
    tensor: str
    readers: list[str]
    bits: int
    differing: int
    near_tie: int


@dataclass
class VerifyReport:
    outputs: dict[str, dict] = field(default_factory=dict)
    layers: list[LayerBits] = field(default_factory=list)
    ok: bool = True
    tolerance: float = 1e-3

    def to_json(self) -> dict:
        return {"ok": self.ok, "tolerance": self.tolerance, "outputs": self.outputs,
                "layers": [vars(x) for x in self.layers]}


def random_inputs(graph: Graph, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        shape = list(graph.shape(name))
        if graph.metadata.get("bnnc.dynamic_batch") == "1":
            shape[0] = samples
        feeds[name] = rng.standard_normal(shape).astype(graph.dtype(name) or "float32")
    return feeds


def _reference_model(onnx_path: str, shapes: dict, extra: list[str]):
    from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx

    graph = load_model(onnx_path, shapes)
    LowerQonnxOpsToOnnx().call(graph)
    graph.infer_shapes()
    known = {o for n in graph.nodes for o in n.output}
    graph.outputs = graph.outputs + [e for e in extra if e in known and e not in graph.outputs]
    return graph


def verify(onnx_path: str, feeds: dict[str, np.ndarray] | None = None, samples: int = 4,
           tolerance: float = 1e-3, input_shapes: dict | None = None) -> VerifyReport:
    import bnnc

    if feeds is None:
        feeds = random_inputs(load_model(onnx_path, input_shapes), samples)
    shapes = dict(input_shapes or {})
    shapes.update({k: list(v.shape) for k, v in feeds.items()})
    with tempfile.TemporaryDirectory() as d:
        res = bnnc.compile_model(onnx_path, os.path.join(d, "m.bnn"), input_shapes=shapes)
        sess = InferenceSession(res.path)
        table = bit_tensors(res.manifest["metadata"])
        out_names = [o.name for o in sess.get_outputs()]
        wanted = out_names + list(table) + [e["mask"] for e in table.values() if e["mask"]]
        ours = sess.run_with_values(feeds, [w for w in wanted if w in res.manifest["values"]])
    ref_graph = _reference_model(onnx_path, shapes, [e["source"] for e in table.values()])
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    so.intra_op_num_threads = 1
    # the graph as written: onnxruntime's fusions (Conv+BatchNorm) would change its arithmetic
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ref_sess = ort.InferenceSession(ref_graph.to_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BnncError(f"onnxruntime cannot run '{onnx_path}': {str(e).splitlines()[0]}") from None
    ref = dict(feeds)
    ref.update(zip(ref_graph.outputs, ref_sess.run(ref_graph.outputs, feeds)))
    report = VerifyReport(tolerance=tolerance)
    for name in out_names:
        report.outputs[name] = _compare_output(ours[name], ref[name], tolerance)
        report.ok &= report.outputs[name]["ok"]
    for bits, e in table.items():
        if bits in ours and e["source"] in ref:
            report.layers.append(_compare_bits(bits, e, ours, ref[e["source"]]))
    return report


def _compare_output(a: np.ndarray, b: np.ndarray, tolerance: float) -> dict:
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    err = float(np.max(np.abs(a.astype(np.float64) - b))) if b.size else 0.0
    out = {"shape": list(a.shape), "max_abs_error": err, "limit": tolerance * scale}
    ok = err <= tolerance * scale
    if a.ndim >= 2 and a.shape[-1] > 1:
        agree = int(np.sum(a.argmax(-1) == b.argmax(-1)))
        out.update(argmax_agree=agree, samples=int(np.prod(a.shape[:-1])))
        ok &= agree == out["samples"]
    out["ok"] = bool(ok)
    return out


def _compare_bits(bits: str, e: dict, ours: dict, u: np.ndarray) -> LayerBits:
    mask = ours.get(e["mask"]) if e["mask"] else None
    mine = unpack_activation(ours[bits], e["channels"], mask)
    z = e["zero"]
    theirs = np.where(u > 0, 1, np.where(u < 0, -1, z))
    diff = mine != theirs
    near = diff & (np.abs(u) <= NEAR_TIE * max(float(np.max(np.abs(u))), 1e-30))
    return LayerBits(e["source"], e["readers"], int(diff.size), int(diff.sum()), int(near.sum()))
