"""The pipeline runner: onnx-ir passes in order, records with stats and reasons, and dumps that
carry the facts the passes keep on nodes."""

from __future__ import annotations

import json

import onnx

from bnnc.layers import get_layers
from bnnc.pipeline import run_pipeline
from passes import PIPELINE, default_pipeline
from tests.bnn_graphs import Builder
from tests.helpers import load_graph


def test_records_and_dumps(tmp_path):
    b = Builder(0)
    y = b.conv(b.sign(b.bn(b.conv(b.sign("x"), b.pm1((4, 3, 3, 3)), pads=[1, 1, 1, 1]), 4)), b.pm1((2, 4, 3, 3)))
    model = load_graph(b.model([("x", [1, 3, 6, 6])], [(y, [1, 2, 4, 4])]))
    records = run_pipeline(model, default_pipeline(), str(tmp_path))
    assert [r.name for r in records] == [p.name for p in PIPELINE]
    fold = next(r for r in records if r.name == "fold-thresholds-into-binary-layers")
    assert fold.modified and fold.stats["folded"] == 1 and fold.op_counts["bnnc.BinaryConv"] == 2
    i = PIPELINE.index(next(p for p in PIPELINE if p.name == "recognize-binary-layers")) + 1
    dumped = onnx.load(str(tmp_path / f"{i:02d}_recognize-binary-layers.onnx"))
    layers = get_layers({p.key: p.value for p in dumped.metadata_props})
    assert [r["mode"] for r in layers] == ["xnor", "xnor"]
    assert (tmp_path / "00_input.onnx").exists() and (tmp_path / f"{i:02d}_recognize-binary-layers.txt").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [p["name"] for p in summary["passes"]] == [r.name for r in records]
