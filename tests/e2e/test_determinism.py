"""Determinism: repeated runs, and one thread against two, give identical binary-layer results
(every packed bit tensor and every binary layer's output) and float outputs within 1e-6."""

import os

import numpy as np
import pytest

import bnnc
from runtime import InferenceSession

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models")


@pytest.mark.parametrize("model, shape", [("birealnet.onnx", [4, 3, 32, 32]), ("digits_bnn.onnx", [16, 1, 8, 8])])
def test_repeated_runs_and_thread_counts_agree(tmp_path, model, shape):
    res = bnnc.compile_model(os.path.join(MODELS, model), str(tmp_path / "m.bnn"), input_shapes={"input": shape})
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x[:, :, ::3, ::2] = 0.0  # exact zeros meet the first binarizer
    plan = res.manifest["plan"]
    binary = [o for s in plan if s["op"].startswith("bnnc.") for o in s["outputs"] if o]
    names = binary + [o["name"] for o in res.manifest["outputs"]]
    assert any(res.manifest["values"][n]["dtype"] == "uint64" for n in binary), "no packed bits to compare"
    runs = []
    for threads in (1, 2, 1, 2, 2):
        sess = InferenceSession(res.path, threads=threads, plan="emitted")
        runs.append(sess.run_with_values({"input": x}, names))
        runs.append(sess.run_with_values({"input": x}, names))
    first = runs[0]
    for other in runs[1:]:
        for n in binary:
            assert np.array_equal(first[n], other[n]), f"binary value {n} differs between runs"
        for o in res.manifest["outputs"]:
            np.testing.assert_allclose(other[o["name"]], first[o["name"]], rtol=0, atol=1e-6)
