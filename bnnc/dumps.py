"""Pass dumps: the graph after every pass as a model Netron opens and a text a person reads.

``PassDumper`` writes ``00_input.onnx``, then for every pass that changed the graph
``NN_<pass>.onnx`` and ``NN_<pass>.txt``; a pass that left the graph byte-for-byte as it was
writes neither (its entry in ``summary.json`` has ``"graph_changed": false, "dump": null``).
Every model passes ``onnx.checker``: value_info entries without a shape or element type (values
whose shape is not known yet) are left out, since the checker rejects a type without a shape
(graph outputs keep their rank from loading, see bnnc.loader). The text is ONNX text syntax
with large initializers elided, the metadata (per-layer JSON) replaced by one short line per
conv/linear layer (its mode, shape, packing and threshold rule), and long lines wrapped.
``summary.json`` holds the passes (modified, stats, reasons, op counts, seconds, dump file) and,
after a compile, the model path, bnnc version, total seconds and artifact size. Every file is
written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnnc.analysis import rule_stats
from runtime.errors import BnncError

ELIDE_ABOVE = 16  # initializers with more elements than this are elided from text dumps
WIDTH = 110  # text lines longer than this are wrapped at their top-level commas
SUMMARY = "summary.json"
_LAYER_OPS = ("BinaryConv", "BinaryDense", "BinaryWeightConv", "BinaryWeightDense")


class PassDumper:
    """Writes the dumps of one pipeline run into ``directory`` (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.files: dict[int, str | None] = {}
        self._last = b""
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise BnncError(f"cannot create dump directory '{directory}': {e.strerror}") from None

    def start(self, model: onnx.ModelProto) -> None:
        self._write_model(model, "00_input", text=False)
        self._last = _fingerprint(model)

    def after_pass(self, index: int, name: str, model: onnx.ModelProto) -> None:
        """Dump the graph after pass ``index`` unless it is identical to the one before."""
        fingerprint = _fingerprint(model)
        if fingerprint == self._last:
            self.files[index] = None
            return
        stem = f"{index:02d}_{name}"
        self._write_model(model, stem, text=True)
        self.files[index] = stem + ".onnx"
        self._last = fingerprint

    def write_summary(self, passes: list[dict[str, Any]]) -> None:
        rows = [dict(p, graph_changed=self.files.get(p["index"]) is not None, dump=self.files.get(p["index"]))
                for p in passes]
        write_file(os.path.join(self.directory, SUMMARY), json.dumps({"passes": rows}, indent=1, default=str))

    def _write_model(self, model: onnx.ModelProto, stem: str, text: bool) -> None:
        clean = checkable(model)
        data = clean.SerializeToString()
        write_file(os.path.join(self.directory, stem + ".onnx"), data)
        if text:
            write_file(os.path.join(self.directory, stem + ".txt"), model_text(clean))


def finish_summary(directory: str, **fields: Any) -> None:
    """Add compile-level ``fields`` (model, bnnc_version, total_seconds, artifact_bytes) to the
    summary a pipeline run left in ``directory``; they come first in the file."""
    path = os.path.join(directory, SUMMARY)
    with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    write_file(path, json.dumps({**fields, **summary}, indent=1, default=str))


def write_file(path: str, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        raise BnncError(f"cannot write '{path}': {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fingerprint(model: onnx.ModelProto) -> bytes:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).digest()


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the value_info entries onnx.checker rejects (no shape or no type)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.value_info
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type != 0
            and vi.type.tensor_type.HasField("shape")]
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep)
    return m


def model_text(model: onnx.ModelProto) -> str:
    """The text dump of ``model`` (see the module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    kept, elided = [], []
    for t in m.graph.initializer:
        n = int(np.prod(t.dims))
        if n > ELIDE_ABOVE or (t.data_type == onnx.TensorProto.UINT64 and n > 2):  # packed bits: unreadable
            dims = "x".join(str(d) for d in t.dims)
            elided.append(f"#   {t.name}: {onnx.TensorProto.DataType.Name(t.data_type).lower()}[{dims}]")
        else:
            kept.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    meta = {p.key: p.value for p in m.metadata_props}
    del m.metadata_props[:]
    head = layer_lines(model.graph.node, inits, meta)
    if elided:
        head += ["# initializers elided from this text (their values are in the .onnx file):"] + elided
    try:
        body = onnx.printer.to_text(m)
    except Exception as e:  # the printer does not know every construct; the .onnx is the truth
        body = f"# onnx.printer could not print this graph: {e}"
    lines = [w for line in body.splitlines() for w in wrap(line)]
    return "\n".join(head + lines) + "\n"


def layer_lines(nodes, inits: dict[str, onnx.TensorProto], meta: dict[str, str]) -> list[str]:
    """One or two short comment lines per conv/linear layer of the model's layer table, then the
    other metadata entries (long values by their size only)."""
    by_name = {n.name: n for n in nodes if n.domain == "bnnc" and n.op_type in _LAYER_OPS}
    table = json.loads(meta.get("bnnc.layers", "[]"))
    out = ["# layers (mode, shape, packing, output rule):"] if table else []
    for rec in table:
        node = by_name.get(rec["name"])
        if rec["mode"] == "float" or node is None:
            why = f": {rec['reason']}" if rec.get("reason") else ""
            out.append(f"#   {rec['name']} {rec['op']} {rec['mode']}{why}")
        else:
            out += binary_layer_lines(rec, node, inits)
    for k, v in meta.items():
        if k != "bnnc.layers":
            out.append(f"# metadata {k}: " + (v if len(v) <= 60 else f"({len(v):,} characters of JSON)"))
    return out


def binary_layer_lines(rec: dict, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    """A binary layer's shape, packed weight words and output; for a bits output, its rule."""
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    w_at = 1 if node.op_type.startswith("BinaryWeight") else 2
    words = int(np.prod(inits[node.input[w_at]].dims)) if node.input[w_at] in inits else 0
    ternary = len(node.input) > w_at + 1 and bool(node.input[w_at + 1])
    output = a.get("output", b"float").decode()
    if "kernel_shape" in a:
        kh, kw = a["kernel_shape"]
        shape = (f"{a['cin']}->{a['cout']} {kh}x{kw}/{a['strides'][0]} pads {list(a['pads'])}"
                 f"{'' if a.get('group', 1) == 1 else ' group ' + str(a['group'])}"
                 f"{' pad ' + str(a['pad_value']) if a.get('pad_value') else ''}")
    else:
        shape = f"{a['k']}->{a['cout']}"
    lines = [f"#   {rec['name']} {node.op_type} {rec['mode']} {shape}: {rec['weight_bytes']:,} B fp32 -> "
             f"{words:,} words{' x2 (ternary)' if ternary else ''}, output {output}"]
    if output == "bits" and len(node.input) > 4 and node.input[4] in inits:
        s = rule_stats(numpy_helper.to_array(inits[node.input[4]]))
        t = f"in [{s['threshold_min']}, {s['threshold_max']}]" if s["threshold_min"] is not None else "none"
        lines.append(f"#     rule over {s['channels']} channels: thresholds {t}; {s['flipped']} flipped, "
                     f"{s['constant']} constant, {s['tied']} tied")
    return lines


def wrap(line: str, width: int = WIDTH) -> list[str]:
    """Break ``line`` after top-level ", " separators (outside quotes, [] and {}) so that no piece
    is longer than ``width`` where it can be helped; ONNX text syntax ignores the line breaks."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 6)
    pieces, start, depth, quoted = [], 0, 0, False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        elif not quoted and depth == 0 and ch == "," and line[i + 1:i + 2] == " ":
            pieces.append(line[start:i + 1])
            start = i + 2
    pieces.append(line[start:])
    out = [pieces[0]]
    for p in pieces[1:]:
        if len(out[-1]) + 1 + len(p) <= width:
            out[-1] += " " + p
        else:
            out.append(indent + p)
    return [w for line in out for w in _wrap_values(line, width, indent)]


def _wrap_values(line: str, width: int, indent: str) -> list[str]:
    """Break a still too long line inside a ``{...}`` list of tensor values, after its commas."""
    if len(line) <= width or "{" not in line:
        return [line]
    cuts = [i + 1 for i, ch in enumerate(line) if ch == "," and line.rfind("{", 0, i) > line.rfind("}", 0, i)]
    out, start, limit = [], 0, width
    for prev, cut in zip([0] + cuts, cuts + [len(line)]):
        if cut - start > limit and prev > start:
            out.append(line[start:prev])
            start, limit = prev, width - len(indent)
    out.append(line[start:])
    return [out[0]] + [indent + x for x in out[1:]]
