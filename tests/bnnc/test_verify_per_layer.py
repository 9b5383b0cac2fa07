"""``bnnc verify --per-layer``: every shared intermediate value compared with onnxruntime, and the
first divergent layer named when one layer's weights in the artifact are corrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

import bnnc
from bnnc.verify import verify
from cli import main
from runtime.artifact import read_artifact, write_artifact
from runtime.bitpack import pack_dense, unpack_dense
from tests.bnn_graphs import Builder
from tests.helpers import CORPUS, make_model, needs_corpus, save


def bnn(tmp_path: Path) -> str:
    """float stem -> three XNOR convs (thresholds folded) -> float Gemm."""
    b = Builder(seed=11)
    h = b.op("Conv", ["x", b.const(b.rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")], "stem", pads=[1, 1, 1, 1])
    for cout, cin in ((24, 16), (24, 24), (32, 24)):
        h = b.op("Conv", [b.sign(b.bn(h, cin)), b.const(b.pm1((cout, cin, 3, 3)), "w")], "bconv", pads=[1, 1, 1, 1])
    f = b.op("Flatten", [b.sign(b.bn(h, 32))])
    y = b.op("Gemm", [f, b.const(b.rng.standard_normal((10, 32 * 36)).astype(np.float32), "fc")], "fc", transB=1)
    return save(make_model(b.nodes, [("x", [2, 3, 6, 6])], [(y, [2, 10])], b.inits), str(tmp_path))


def corrupt(artifact: str, out: str, layer: str) -> None:
    """Negate half the filters of ``layer`` (a binary layer's packed weights, or a float layer's)."""
    manifest, tensors = read_artifact(artifact)
    step = next(s for s in manifest["plan"] if s["name"] == layer)
    if step["op"] in ("bnnc.BinaryConv", "bnnc.BinaryDense"):
        a = step["attrs"]
        shape = (a["cout"], a["cin"] // a.get("group", 1), *a["kernel_shape"]) if "kernel_shape" in a else (a["cout"], a["k"])
        w = unpack_dense(tensors[step["inputs"][2]], shape).astype(np.float32)
        w[: shape[0] // 2] *= -1
        tensors[step["inputs"][2]] = pack_dense(w)[0]
    else:
        tensors[step["inputs"][1]] = tensors[step["inputs"][1]] * np.float32(-1)
    write_artifact(out, manifest, tensors)


def feeds():
    return {"x": np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32)}


def test_clean_model_has_no_divergent_layer(tmp_path):
    report = verify(bnn(tmp_path), feeds(), per_layer=True)
    assert report.ok and report.first_divergent is None
    layers = {v.layer for v in report.per_layer}
    assert layers == {"stem_2_node", "bconv_10_node", "bconv_18_node", "bconv_26_node", "fc_35_node"}
    kinds = {v.kind for v in report.per_layer}
    assert kinds == {"float", "bits"}
    assert all(v.differing == 0 for v in report.per_layer if v.kind == "bits")


@pytest.mark.parametrize("layer", ["stem_2_node", "bconv_10_node", "bconv_18_node", "bconv_26_node"])
def test_corrupted_layer_is_the_first_divergent(tmp_path, layer):
    model = bnn(tmp_path)
    res = bnnc.compile_model(model, str(tmp_path / "m.bnn"))
    corrupt(res.path, str(tmp_path / "bad.bnn"), layer)
    report = verify(model, feeds(), per_layer=True, artifact=str(tmp_path / "bad.bnn"))
    first = report.first_divergent
    assert first is not None and first.layer == layer, [(v.layer, v.tensor, v.divergent) for v in report.per_layer]
    before = report.per_layer[: report.per_layer.index(first)]
    assert (len(before) > 0) == (layer != "stem_2_node") and not any(v.divergent for v in before)


def test_cli_names_the_first_divergent_layer(tmp_path):
    model = bnn(tmp_path)
    res = bnnc.compile_model(model, str(tmp_path / "m.bnn"))
    corrupt(res.path, str(tmp_path / "bad.bnn"), "bconv_18_node")
    np.save(tmp_path / "x.npy", feeds()["x"])
    r = CliRunner().invoke(main, ["verify", model, "--input", str(tmp_path / "x.npy"), "--per-layer",
                                  "--artifact", str(tmp_path / "bad.bnn")])
    assert "first divergent layer: bconv_18_node" in r.stdout, r.stdout + r.stderr
    assert "DIVERGES" in r.stdout
    r = CliRunner().invoke(main, ["verify", model, "--input", str(tmp_path / "x.npy"), "--per-layer", "--json",
                                  "--artifact", str(tmp_path / "bad.bnn")])
    out = json.loads(r.stdout)
    assert out["first_divergent_layer"] == "bconv_18_node" and out["first_divergent"]["divergent"]
    assert [v["layer"] for v in out["per_layer"]][0] == "stem_2_node"
    np.save(tmp_path / "x1.npy", feeds()["x"][:1])
    r = CliRunner().invoke(main, ["verify", model, "--input", str(tmp_path / "x1.npy"), "--artifact", str(tmp_path / "m.bnn")])
    # the model's own batch is 2: the input is refused against the model before the artifact is read
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "the model expects [2, 3, 6, 6]" in r.stderr


@needs_corpus
def test_corpus_model_corrupted_layer_is_found(tmp_path):
    folder = CORPUS / "brevitas_cnv_1w1a_half_qonnx"
    x = {"x": np.load(folder / "input.npy")}
    res = bnnc.compile_model(str(folder / "model.onnx"), str(tmp_path / "m.bnn"), input_shapes={"x": list(x["x"].shape)})
    corrupt(res.path, str(tmp_path / "bad.bnn"), "node_Conv_230")
    report = verify(str(folder / "model.onnx"), x, per_layer=True, artifact=str(tmp_path / "bad.bnn"))
    assert report.first_divergent.layer == "node_Conv_230"
    clean = verify(str(folder / "model.onnx"), x, per_layer=True, artifact=res.path)
    assert clean.ok and clean.first_divergent is None


def test_artifact_of_another_model_is_an_error(tmp_path):
    model = bnn(tmp_path)
    relu = helper.make_node("Relu", ["x"], ["z"], name="relu")
    other = save(make_model([relu], [("x", [2, 3, 6, 6])], [("z", [2, 3, 6, 6])]), str(tmp_path), "other.onnx")
    art = bnnc.compile_model(other, str(tmp_path / "other.bnn")).path
    r = CliRunner().invoke(main, ["verify", model, "--artifact", art])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "compiled from another model" in r.stderr
