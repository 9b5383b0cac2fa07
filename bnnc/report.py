"""Human and machine reports: per-pass progress lines and the per-node ``bnnc inspect`` table."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

import click
import numpy as np

from bnnc.analysis import analyze_conv, rule_stats
from bnnc.pipeline import PassRecord
from runtime.bitpack import unpack_dense

CONV_OPS = {"Conv", "bnnc.FusedConv"}
DENSE_OPS = {"Gemm", "MatMul", "bnnc.FusedGemm"}


def pass_summary(cls) -> str:
    """First line of a pass module's docstring."""
    doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    prefix = f"{cls.name}:"
    return first[len(prefix):].strip() if first.startswith(prefix) else first.replace("``", "")


def print_record(rec: PassRecord) -> None:
    stats = ", ".join(f"{k}={v}" for k, v in rec.stats.items())
    mark = "modified" if rec.modified else "unchanged"
    click.echo(f"[{rec.index:02d}] {rec.name:<34} {mark:<9} {rec.seconds * 1000:7.1f} ms  {stats}", err=True)
    for r in rec.reasons:
        click.echo(f"       {r}", err=True)


def node_macs(op: str, attrs: dict, in_shapes: list, out_shape: tuple) -> int:
    """Multiply-accumulates of one plan step (0 for data movement and elementwise ops)."""
    if op in CONV_OPS and len(in_shapes) > 1 and in_shapes[1] is not None:
        return int(np.prod(out_shape)) * int(np.prod(in_shapes[1][1:]))
    if op in DENSE_OPS and in_shapes and in_shapes[0] is not None:
        a = in_shapes[0]
        k = a[0] if op.endswith("Gemm") and attrs.get("transA", 0) else a[-1]
        return int(np.prod(out_shape)) * int(k)
    macs = attrs.get("macs")
    return int(macs) if isinstance(macs, int) else 0


def _load_compiled(path: str, input_shapes: list[str]):
    """(manifest, tensors, artifact bytes, pass records or None) of an .onnx or a .bnn."""
    from runtime.artifact import read_artifact
    from runtime.errors import BnncError

    if path.endswith(".onnx"):
        import bnnc

        with tempfile.TemporaryDirectory() as d:
            res = bnnc.compile_model(path, os.path.join(d, "model.bnn"), input_shapes=input_shapes)
            manifest, tensors = read_artifact(res.path)
            return manifest, tensors, res.artifact_bytes, res.records
    if not os.path.isfile(path):
        raise BnncError(f"no such file: '{path}'")
    manifest, tensors = read_artifact(path)
    return manifest, tensors, os.path.getsize(path), None


def build_report(path: str, input_shapes: list[str] | None = None) -> dict[str, Any]:
    """Everything ``bnnc inspect`` and the HTML report show about a compiled model: the layer
    table (with logical shapes, threshold statistics and, for binary convolutions, the
    bnnc.analysis figures), the plan's kernels, totals and, for an .onnx, the passes."""
    manifest, tensors, size, records = _load_compiled(path, input_shapes or [])
    values = manifest["values"]
    nodes = []
    for s in manifest["plan"]:
        shape_of = lambda n: tuple(tensors[n].shape) if n in tensors else tuple(values[n]["shape"]) if n in values else None  # noqa: E731
        in_shapes = [shape_of(n) if n else None for n in s["inputs"]]
        out_shape = tuple(values[s["outputs"][0]]["shape"])
        wbytes = sum(int(tensors[n].nbytes) for n in s["inputs"] if n in tensors)
        nodes.append({
            "name": s["name"],
            "op": s["op"],
            "output_shape": list(out_shape),
            "macs": node_macs(s["op"], s["attrs"], in_shapes, out_shape),
            "weight_bytes": wbytes,
            "inputs": [n for n in s["inputs"] if n and n not in tensors],
            "outputs": [n for n in s["outputs"] if n],
        })
    meta = manifest.get("metadata", {})
    layers = json.loads(meta.get("bnnc.layers", "[]"))
    steps = {s["name"]: s for s in manifest["plan"]}
    for r in layers:
        r["binary_macs"] = r["macs"] if r["mode"] in ("xnor", "ternary") else 0
        step = steps.get(r["name"])
        r.update(layer_details(step, values, tensors) if step else {"kernel": None})
    total = sum(r["macs"] for r in layers)
    fp32 = int(meta.get("bnnc.source_bytes", 0))
    return {
        "model": path,
        "graph_name": manifest.get("graph_name", ""),
        "producer": manifest.get("producer", ""),
        "layers": layers,
        "nodes": nodes,
        "total_macs": sum(n["macs"] for n in nodes),
        "total_weight_bytes": sum(n["weight_bytes"] for n in nodes),
        "binary_mac_fraction": (sum(r["binary_macs"] for r in layers) / total) if total else 0.0,
        "artifact_bytes": size,
        "fp32_bytes": fp32,
        "compression": fp32 / size if fp32 and size else None,
        "passes": [vars(r) for r in records] if records is not None else None,
    }


_PACKED_W = {"bnnc.BinaryConv": 2, "bnnc.BinaryDense": 2, "bnnc.BinaryWeightConv": 1, "bnnc.BinaryWeightDense": 1}


def layer_details(step: dict, values: dict, tensors: dict) -> dict[str, Any]:
    """Kernel, logical input/output shapes, threshold statistics and bit-pattern analysis of
    the plan step that computes a layer (packed values are read back to logical NCHW / NC)."""
    a = step["attrs"]
    shape = lambda n, c: _logical(values[n]["shape"], values[n]["dtype"], c) if n in values else None  # noqa: E731
    out = {
        "kernel": step["op"],
        "input_shape": shape(step["inputs"][0], a.get("cin", a.get("k"))),
        "output_shape": shape(step["outputs"][0], a.get("cout")),
        "thresholds": None,
        "analysis": None,
    }
    if a.get("output") == "bits" and len(step["inputs"]) > 4 and step["inputs"][4] in tensors:
        out["thresholds"] = rule_stats(tensors[step["inputs"][4]])
    w_at = _PACKED_W.get(step["op"])
    if w_at is not None and "kernel_shape" in a and step["inputs"][w_at] in tensors:
        group = int(a.get("group", 1))
        logical = (a["cout"], a["cin"] // group, *a["kernel_shape"])
        mask = step["inputs"][w_at + 1] if len(step["inputs"]) > w_at + 1 else ""
        w = unpack_dense(tensors[step["inputs"][w_at]], logical, tensors.get(mask) if mask else None)
        out["analysis"] = analyze_conv(w, group)
    return out


def _logical(shape: list[int], dtype: str, channels: int | None) -> list[int]:
    """The logical shape of a value: packed uint64 [N, H, W, words] / [N, words] -> NCHW / NC."""
    if dtype != "uint64" or channels is None:
        return list(shape)
    return [shape[0], channels, *shape[1:-1]] if len(shape) == 4 else [shape[0], channels]


def _table(rows: list[tuple], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_layers(report: dict[str, Any]) -> list[str]:
    rows = [("layer", "op", "mode", "MACs", "weight bytes", "packed bytes", "reason")]
    for r in report["layers"]:
        rows.append((r["name"], r["op"], r["mode"], f"{r['macs']:,}", f"{r['weight_bytes']:,}",
                     f"{r['packed_weight_bytes']:,}", r.get("reason", "")))
    return _table(rows, {3, 4, 5})


def format_analysis(report: dict[str, Any]) -> list[str]:
    """Threshold statistics and bit-pattern analysis of the binary layers (bnnc.analysis)."""
    rows = [("layer", "flipped/constant/tied of channels", "kxk codewords (distinct)", "top-16 share",
             "entropy bits", "MST: XNOR work left")]
    for r in report["layers"]:
        t, an = r.get("thresholds"), r.get("analysis")
        if not t and not an:
            continue
        cw, mst = (an or {}).get("codewords"), (an or {}).get("mst")
        rows.append((r["name"], f"{t['flipped']}/{t['constant']}/{t['tied']} of {t['channels']}" if t else "",
                     f"{cw['distinct']} of {cw['possible']}" if cw else "", f"{cw['top16_share']:.1%}" if cw else "",
                     f"{cw['entropy_bits']:.2f}" if cw else "", f"{mst['xnor_fraction']:.1%}" if mst else ""))
    if len(rows) == 1:
        return []
    return ["Binary layers: threshold rules and weight bit patterns:"] + _table(rows, {2, 3, 4, 5}) + [""]


def _size_ratio(artifact: int, onnx_bytes: int) -> str:
    """" (5.2x smaller than the N-byte ONNX model)", or larger, or the same size."""
    if not onnx_bytes or not artifact:
        return ""
    if artifact < onnx_bytes:
        how = f"{onnx_bytes / artifact:.1f}x smaller than"
    elif artifact > onnx_bytes:
        how = f"{artifact / onnx_bytes:.1f}x larger than"
    else:
        how = "the same size as"
    return f" ({how} the {onnx_bytes:,}-byte ONNX model)"


def format_report(report: dict[str, Any]) -> str:
    lines = []
    if report["layers"]:
        lines += ["Layers (convolutions and linear layers of the input model):"] + format_layers(report) + [""]
        fp32 = report["fp32_bytes"]
        ratio = _size_ratio(report["artifact_bytes"], fp32)
        lines.append(f"binary MAC fraction: {report['binary_mac_fraction']:.1%}   artifact: {report['artifact_bytes']:,} bytes{ratio}")
        lines.append("")
        lines += format_analysis(report)
    rows = [("node", "op", "output shape", "MACs", "weight bytes")]
    for n in report["nodes"]:
        rows.append((n["name"], n["op"], "x".join(map(str, n["output_shape"])), f"{n['macs']:,}", f"{n['weight_bytes']:,}"))
    lines += ["Kernels of the compiled plan:"] + _table(rows, {3, 4}) + [""]
    lines.append(f"total MACs: {report['total_macs']:,}   weight bytes: {report['total_weight_bytes']:,}   artifact bytes: {report['artifact_bytes']:,}")
    return "\n".join(lines)
