"""The example BNNs in models/ (exported from PyTorch in the idioms users write) compile, run
bit-exact against onnxruntime on every binarized tensor, and keep exactly their binary layers."""

from pathlib import Path

import numpy as np
import pytest

from bnnc.report import build_report
from bnnc.verify import verify

MODELS = Path(__file__).resolve().parents[2] / "models"
# modes of the conv/linear layers, in graph order (models/README.md describes each model)
MODES = {
    "birealnet": ["float", "xnor", "xnor", "float", "xnor", "xnor", "float", "float"],
    "bwn": ["float", "binary-weight", "binary-weight", "binary-weight", "float"],
    "digits_bnn": ["float", "xnor", "xnor", "xnor", "float"],
    "pad_minus_one": ["float", "xnor", "xnor", "xnor", "float"],
    "sign_ste_cnn": ["float", "xnor", "xnor", "xnor", "xnor", "float"],
    "ternary": ["float", "ternary", "ternary", "float"],
    "xnornet": ["float", "xnor", "xnor", "xnor", "xnor", "float"],
}


def test_every_model_is_listed():
    assert sorted(p.stem for p in MODELS.glob("*.onnx")) == sorted(MODES)


@pytest.mark.parametrize("name", sorted(MODES))
def test_model_is_bit_exact_and_binary(name):
    path = str(MODELS / f"{name}.onnx")
    report = verify(path, samples=3)
    assert report.ok, report.outputs
    for layer in report.layers:
        assert layer.differing == layer.near_tie, f"{layer.tensor}: {layer.differing} bits differ"
    inspect = build_report(path)
    assert [r["mode"] for r in inspect["layers"]] == MODES[name]
    for r in inspect["layers"]:
        assert bool(r["reason"]) == (r["mode"] == "float")
        if r["mode"] != "float":
            assert r["packed_weight_bytes"] * 30 <= r["weight_bytes"] or r["mode"] == "ternary"


def test_digits_predictions_identical(tmp_path):
    import onnxruntime as ort

    import bnnc
    from runtime import InferenceSession

    data = np.load(MODELS / "digits_test.npz")
    x, y = data["x_test"], data["y_test"]
    res = bnnc.compile_model(str(MODELS / "digits_bnn.onnx"), str(tmp_path / "digits.bnn"))
    ours = InferenceSession(res.path).run(None, {"input": x})[0]
    theirs = ort.InferenceSession(str(MODELS / "digits_bnn.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    assert (ours.argmax(1) == y).mean() == (theirs.argmax(1) == y).mean() > 0.95
