"""``bnnc verify``: compile a model, run it next to onnxruntime, and say where they differ.

onnxruntime runs the input model as written (graph optimizations off, since its Conv+BatchNorm
fusion changes the arithmetic; QONNX nodes lowered to standard ONNX first, since onnxruntime
cannot load them) with every binarized tensor added as an output. bnnc runs the artifact and
keeps the same tensors as bits. Per binary layer the input bits are compared with onnxruntime's
sign of the same pre-sign tensor; a differing bit whose pre-sign value is within ``NEAR_TIE`` of
zero (relative to the tensor's largest magnitude) is a near-tie flip: the float graph rounds such
values either way, bnnc's integer result is the exact one (DESIGN.md). The verdict is on the
outputs: argmax equal for every sample and max error within tolerance.

Per layer (``per_layer=True``) onnxruntime also returns every intermediate value of the input
model, and every value bnnc computes under the same name and shape (or as bits of it) is
compared: float values by their max error (within ``tolerance`` of the reference's largest
magnitude), bits as above. Each value is attributed to the conv/linear layer it comes from (the
latest such layer among its producers, in graph order); the first value, in graph order, with
an error beyond tolerance or a differing bit that is not a near-tie flip names the first
divergent layer. Near-tie flips change the next layer's integers, so a divergence after values
with near-tie flips is marked as possibly caused by them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from bnnc.ir import dtype, shape
from bnnc.ir_convert import infer_shapes, to_proto
from bnnc.layers import bit_tensors
from bnnc.loader import DYNAMIC_BATCH, check_feeds, load_model
from bnnc.onnxrt import session
from bnnc.ops import binarize
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
class ValueDiff:
    """One value of the input model that bnnc also computes, compared (see the module docstring)."""

    tensor: str
    node: str
    layer: str
    kind: str  # "float" or "bits"
    max_abs_error: float | None = None
    limit: float | None = None
    bits: int = 0
    differing: int = 0
    near_tie: int = 0
    divergent: bool = False
    after_near_tie: bool = False


@dataclass
class VerifyReport:
    outputs: dict[str, dict] = field(default_factory=dict)
    layers: list[LayerBits] = field(default_factory=list)
    ok: bool = True
    tolerance: float = 1e-3
    per_layer: list[ValueDiff] | None = None

    @property
    def first_divergent(self) -> ValueDiff | None:
        return next((v for v in self.per_layer or [] if v.divergent), None)

    def to_json(self) -> dict:
        out = {"ok": self.ok, "tolerance": self.tolerance, "outputs": self.outputs,
               "layers": [vars(x) for x in self.layers]}
        if self.per_layer is not None:
            first = self.first_divergent
            out["per_layer"] = [vars(v) for v in self.per_layer]
            out["first_divergent_layer"] = first.layer if first else None
            out["first_divergent"] = vars(first) if first else None
        return out


def random_inputs(model: ir.Model, samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        dims = list(shape(v))
        if model.meta.get(DYNAMIC_BATCH):
            dims[0] = samples
        feeds[v.name] = rng.standard_normal(dims).astype(dtype(v) or "float32")
    return feeds


def _reference_model(onnx_path: str, shapes: dict, extra: list[str]) -> onnx.ModelProto:
    """The model onnxruntime runs: as loaded, QONNX ops lowered, the values ``extra`` exposed."""
    from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx

    model = load_model(onnx_path, shapes)
    LowerQonnxOpsToOnnx()(model)
    infer_shapes(model)
    proto = to_proto(model)
    expose(proto, extra)
    return proto


def expose(model: onnx.ModelProto, names: list[str]) -> None:
    """Make the computed values among ``names`` graph outputs too (onnxruntime returns them)."""
    known = {o for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(e)
                              for e in dict.fromkeys(names) if e in known and e not in outputs)


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def verify(onnx_path: str, feeds: dict[str, np.ndarray] | None = None, samples: int = 4,
           tolerance: float = 1e-3, input_shapes: dict | None = None, per_layer: bool = False,
           artifact: str | None = None) -> VerifyReport:
    """Compare bnnc with onnxruntime on ``onnx_path`` (see the module docstring). ``artifact``
    checks an existing compiled file instead of compiling the model again."""
    declared = load_model(onnx_path, input_shapes)
    if feeds is None:
        feeds = random_inputs(declared, samples)
    else:
        check_feeds(declared, feeds)  # before their shapes become the compiled ones
    shapes = dict(input_shapes or {})
    shapes.update({k: list(v.shape) for k, v in feeds.items()})
    ref_graph = _reference_model(onnx_path, shapes, [])
    with tempfile.TemporaryDirectory() as d:
        manifest, ours = _run_bnnc(onnx_path, artifact or "", os.path.join(d, "m.bnn"), shapes, feeds,
                                   ref_graph if per_layer else None)
    table = bit_tensors(manifest["metadata"])
    expose(ref_graph, [e["source"] for e in table.values()])
    if per_layer:
        expose(ref_graph, [o for n in ref_graph.graph.node for o in n.output if o])
    ref = dict(feeds)
    names = _output_names(ref_graph)
    ref.update(zip(names, session(ref_graph, what=f"'{onnx_path}'").run(names, feeds)))
    missing = [o["name"] for o in manifest["outputs"] if o["name"] not in ref]
    if missing:
        raise BnncError(f"the artifact's outputs {', '.join(missing)} are not values of '{onnx_path}': "
                        "was it compiled from another model?")
    report = VerifyReport(tolerance=tolerance)
    for o in manifest["outputs"]:
        name = o["name"]
        report.outputs[name] = _compare_output(ours[name], ref[name], tolerance)
        report.ok &= report.outputs[name]["ok"]
    for bits, e in table.items():
        if bits in ours and e["source"] in ref:
            report.layers.append(_compare_bits(bits, e, ours, ref[e["source"]]))
    if per_layer:
        report.per_layer = compare_values(ref_graph, ref, ours, manifest["values"], report.layers, tolerance)
    return report


def _run_bnnc(onnx_path: str, artifact: str, scratch: str, shapes: dict, feeds: dict,
              ref_graph: onnx.ModelProto | None):
    """(manifest, values) of bnnc's run: outputs, bit tensors with their masks and, with
    ``ref_graph``, every value whose name the reference graph also has."""
    import bnnc
    from runtime.artifact import read_artifact

    if artifact:
        if not os.path.isfile(artifact):
            raise BnncError(f"no such file: '{artifact}'")
        path = artifact
        manifest, _ = read_artifact(path)
    else:
        path = bnnc.compile_model(onnx_path, scratch, input_shapes=shapes).path
        manifest, _ = read_artifact(path)
    for i in manifest["inputs"]:
        if i["name"] in feeds and list(feeds[i["name"]].shape) != list(i["shape"]):
            raise BnncError(f"input '{i['name']}' has shape {list(feeds[i['name']].shape)}; "
                            f"'{path}' was compiled for {i['shape']}")
    sess = InferenceSession(path)
    table = bit_tensors(manifest["metadata"])
    wanted = [o["name"] for o in manifest["outputs"]] + list(table) + [e["mask"] for e in table.values() if e["mask"]]
    if ref_graph is not None:
        wanted += [o for n in ref_graph.graph.node for o in n.output if o]
    values = manifest["values"]
    taken = sess.run_with_values(feeds, list(dict.fromkeys(w for w in wanted if w in values)))
    if sess._plan is not None:  # the outputs as the generated plan function, which users run, computes them
        taken.update(zip([o["name"] for o in manifest["outputs"]], sess.run(None, feeds)))
    return manifest, taken


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def source_layers(graph: onnx.ModelProto) -> dict[str, str]:
    """For every value, the conv/linear node it comes from: the latest such node (in graph
    order) among its producers; "" before the first layer."""
    order = {n.name: i for i, n in enumerate(graph.graph.node)}
    of_value: dict[str, str] = {}
    for n in graph.graph.node:
        if n.op_type in LAYER_OPS:
            layer = n.name
        else:
            ups = [of_value[i] for i in n.input if of_value.get(i)]
            layer = max(ups, key=lambda x: order[x], default="")
        for o in n.output:
            of_value[o] = layer
    return of_value


def compare_values(ref_graph: onnx.ModelProto, ref: dict, ours: dict, values: dict, bits: list[LayerBits],
                   tolerance: float) -> list[ValueDiff]:
    """Every value of the reference graph that bnnc computed too, in graph order."""
    layer_of = source_layers(ref_graph)
    by_source = {b.tensor: b for b in bits}
    out: list[ValueDiff] = []
    near_seen = False
    for node in ref_graph.graph.node:
        for name in node.output:
            if name not in ref:
                continue
            d = ValueDiff(name, node.name, layer_of.get(name, "") or node.name, "bits")
            if name in by_source:
                b = by_source[name]
                d.bits, d.differing, d.near_tie = b.bits, b.differing, b.near_tie
                d.divergent = b.differing > b.near_tie
            elif name in ours and values.get(name, {}).get("dtype", "").startswith("float") \
                    and tuple(ours[name].shape) == tuple(np.shape(ref[name])):
                o = _compare_output(ours[name], np.asarray(ref[name]), tolerance)
                d.kind, d.max_abs_error, d.limit = "float", o["max_abs_error"], o["limit"]
                d.divergent = o["max_abs_error"] > o["limit"]
            else:
                continue
            d.after_near_tie = near_seen and d.divergent
            near_seen |= d.near_tie > 0
            out.append(d)
    return out


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
    theirs = binarize(u, z)
    diff = mine != theirs
    near = diff & (np.abs(u) <= NEAR_TIE * max(float(np.max(np.abs(u))), 1e-30))
    return LayerBits(e["source"], e["readers"], int(diff.size), int(diff.sum()), int(near.sum()))
