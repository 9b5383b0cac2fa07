"""A compile that fails or is interrupted leaves the previous artifact exactly as it was, and no
temporary file behind (write_artifact writes a temporary file beside the target and renames it)."""

import os

import numpy as np
import pytest
from onnx import helper

import bnnc
import runtime.artifact
from runtime import BnncError, InferenceSession
from tests.helpers import make_model, save


def _model(tmp_path, op="Relu"):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node(op, ["c"], ["y"])]
    return save(make_model(nodes, [("x", [1, 3, 5, 5])], [("y", [1, 4, 3, 3])], {"w": w}), str(tmp_path), op + ".onnx")


def _leftovers(directory):
    return [f for f in os.listdir(directory) if f.startswith(".bnnc-")]


def test_failed_or_interrupted_compile_keeps_the_previous_artifact(tmp_path, monkeypatch):
    out = str(tmp_path / "m.bnn")
    bnnc.compile(_model(tmp_path), out)
    before = open(out, "rb").read()

    with pytest.raises(BnncError):  # fails in the compiler, before anything is written
        bnnc.compile(_model(tmp_path, "Hardmax"), out)

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the temporary file is complete; the rename never happens

    monkeypatch.setattr(runtime.artifact.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bnnc.compile(_model(tmp_path, "Sigmoid"), out)
    monkeypatch.undo()

    def disk_full(self, data):
        raise OSError(28, "No space left on device")

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        write = disk_full

    real_fdopen = os.fdopen
    monkeypatch.setattr(runtime.artifact.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(BnncError, match="No space left"):
        bnnc.compile(_model(tmp_path, "Sigmoid"), out)
    monkeypatch.undo()

    assert open(out, "rb").read() == before
    assert _leftovers(tmp_path) == []
    y = InferenceSession(out).run(None, {"x": np.ones((1, 3, 5, 5), np.float32)})[0]
    assert (y >= 0).all()  # still the Relu model
