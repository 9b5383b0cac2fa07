"""Pass dumps: checker-valid models, no copies of unchanged graphs, short readable text, a full
summary; on small graphs and on both Brevitas QONNX corpus models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper

import bnnc
from bnnc.dumps import WIDTH, model_text, wrap
from tests.bnn_graphs import Builder
from tests.helpers import CORPUS, make_model, needs_corpus, save

BREVITAS = ["brevitas_cnv_1w1a_half_qonnx", "brevitas_tfc_1w1a_qonnx"]


def check_dumps(dump: Path, artifact: Path, model: Path) -> dict:
    summary = json.loads((dump / "summary.json").read_text())
    assert Path(summary["model"]).resolve() == model.resolve() and summary["bnnc_version"] == bnnc.__version__
    assert summary["artifact_bytes"] == os.path.getsize(artifact) and summary["total_seconds"] > 0
    files = set(os.listdir(dump))
    assert "00_input.onnx" in files
    for p in summary["passes"]:
        stem = f"{p['index']:02d}_{p['name']}"
        assert p["seconds"] >= 0 and {"modified", "stats", "reasons", "op_counts"} <= set(p)
        assert p["graph_changed"] == (p["dump"] is not None)
        if p["dump"] is None:
            assert stem + ".onnx" not in files and stem + ".txt" not in files
        else:
            assert p["dump"] == stem + ".onnx" and stem + ".txt" in files
    written = [p["dump"] for p in summary["passes"] if p["dump"]]
    assert len(files) == 2 + 2 * len(written)  # 00_input.onnx, summary.json, .onnx + .txt per dump
    previous = None
    for f in ["00_input.onnx"] + written:
        model_proto = onnx.load(str(dump / f))
        onnx.checker.check_model(model_proto, full_check=True)
        data = model_proto.SerializeToString(deterministic=True)
        assert data != previous, f"{f} repeats the graph before it"
        previous = data
    for f in files:
        if f.endswith(".txt"):
            lines = (dump / f).read_text().splitlines()
            assert max(len(x) for x in lines) < 3 * WIDTH, f
    return summary


@needs_corpus
@pytest.mark.parametrize("case", BREVITAS)
def test_brevitas_dumps_pass_checker(tmp_path, case):
    model = CORPUS / case / "model.onnx"
    res = bnnc.compile_model(str(model), str(tmp_path / "m.bnn"), dump_dir=str(tmp_path / "d"))
    summary = check_dumps(tmp_path / "d", tmp_path / "m.bnn", model)
    assert any(p["dump"] is None for p in summary["passes"])  # remove-identity-ops changes nothing here
    last = [p["dump"] for p in summary["passes"] if p["dump"]][-1]
    text = (tmp_path / "d" / last.replace(".onnx", ".txt")).read_text()
    binary = [r for r in json.loads(res.manifest["metadata"]["bnnc.layers"]) if r["mode"] == "xnor"]
    assert binary
    for r in binary:
        assert f"#   {r['name']} Binary" in text
    assert "rule over" in text and "flipped" in text and "bnnc.layers" not in text


def test_unchanged_pass_writes_no_copy_and_text_parses(tmp_path):
    b = Builder(seed=4)
    x = "x"
    h = b.op("Conv", [x, b.const(b.pm1((16, 3, 3, 3)), "w")], "conv", pads=[1, 1, 1, 1])
    s = b.sign(b.bn(h, 16))
    h = b.op("Conv", [s, b.const(b.pm1((8, 16, 3, 3), alpha=np.linspace(0.5, 1, 8)), "w")], "conv", pads=[1, 1, 1, 1])
    s = b.sign(b.bn(h, 8))
    y = b.op("Conv", [s, b.const(b.pm1((4, 8, 1, 1)), "w")], "conv")
    model = make_model(b.nodes, [("x", [1, 3, 6, 6])], [(y, [1, 4, 6, 6])], b.inits)
    path = Path(save(model, str(tmp_path)))
    bnnc.compile_model(str(path), str(tmp_path / "m.bnn"), dump_dir=str(tmp_path / "d"))
    summary = check_dumps(tmp_path / "d", tmp_path / "m.bnn", path)
    by_name = {p["name"]: p for p in summary["passes"]}
    assert by_name["lower-qonnx-ops"]["dump"] is None and by_name["recognize-binary-layers"]["dump"]
    text = (tmp_path / "d" / by_name["fold-thresholds-into-binary-layers"]["dump"].replace(".onnx", ".txt")).read_text()
    assert "rule over 8 channels" in text
    # wrapped ONNX text still parses to the same nodes as the unwrapped printer output
    last = onnx.load(str(tmp_path / "d" / by_name["fold-thresholds-into-binary-layers"]["dump"]))
    small = [t for t in last.graph.initializer if 1 < np.prod(t.dims) <= 16 and t.data_type == onnx.TensorProto.FLOAT]
    assert small  # scale and bias lists, wrapped inside their braces
    del last.graph.initializer[:]
    last.graph.initializer.extend(small)
    del last.metadata_props[:]
    plain = onnx.printer.to_text(last)
    wrapped = "\n".join(w for line in plain.splitlines() for w in wrap(line, 60))
    assert max(len(x) for x in wrapped.splitlines()) < max(len(x) for x in plain.splitlines())
    a, b2 = onnx.parser.parse_model(plain), onnx.parser.parse_model(wrapped)
    assert [str(n) for n in a.graph.node] == [str(n) for n in b2.graph.node]
    assert [str(t) for t in a.graph.initializer] == [str(t) for t in b2.graph.initializer]


def test_text_keeps_small_initializers_and_elides_large(tmp_path):
    w = np.arange(40, dtype=np.float32).reshape(2, 20)
    c = np.array([1.5, 2.5], np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Add", ["m", "c"], ["y"], name="add")]
    model = make_model(nodes, [("x", [1, 2])], [("y", [1, 20])], {"w": w, "c": np.resize(c, 20)[:2]})
    text = model_text(model)
    assert "#   w: float[2x20]" in text and "{1.5,2.5}" in text.replace(" ", "")
