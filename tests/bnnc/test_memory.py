"""Peak memory reporting (bnnc.memory): each engine's figure counts the model it holds."""

import os

import numpy as np
import onnx

import bnnc
from bnnc.builder import GraphBuilder
from bnnc.memory import format_memory, peak_memory


def test_peak_memory_counts_the_weights_each_engine_holds(tmp_path):
    # a float 2048x2048 layer: 16 MiB of weights that either engine must keep resident
    b = GraphBuilder(0)
    y = b.dense("x", b.normal((2048, 2048), 2048))
    model = b.model([("x", [1, 2048])], [(y, [1, 2048])])
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    res = bnnc.compile_model(path, os.path.join(tmp_path, "m.bnn"))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2048)).astype(np.float32)}
    m = peak_memory(res.path, model, feeds, threads=1, runs=3)
    for engine in ("bnnc", "onnxruntime"):
        r = m[engine]
        assert "error" not in r, r
        assert 15 < r["peak_mb"] <= r["setup_peak_mb"] + 4, (engine, r)
        assert r["baseline_mb"] > 10
    text = "\n".join(format_memory(m))
    assert "bnnc" in text and "onnxruntime" in text and "peak" in text
