"""The runtime runs an artifact in a process where the compiler side cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from onnx import helper

import bnnc
from runtime import InferenceSession
from tests.helpers import make_model, save

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCKED = ("onnx", "onnxruntime", "onnx_ir", "click", "bnnc", "passes")

CHILD = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"import of {{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import runtime

    sess = runtime.InferenceSession({artifact!r})
    out = sess.run(None, {{"x": np.load({x!r})}})
    np.save({result!r}, out[0])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok")
    """
)


def _model():
    r = np.random.default_rng(7)
    inits = {
        "w": r.standard_normal((6, 3, 3, 3)).astype(np.float32),
        "b": r.standard_normal(6).astype(np.float32),
        "fc": r.standard_normal((4, 6)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4])], inits)


def test_runtime_imports_nothing_from_the_compiler(tmp_path):
    artifact = str(tmp_path / "m.bnn")
    bnnc.compile_model(save(_model(), str(tmp_path)), artifact, passes=[])
    x = np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = InferenceSession(artifact).run(None, {"x": x})[0]
    np.save(tmp_path / "x.npy", x)
    result = str(tmp_path / "y.npy")
    code = CHILD.format(blocked=BLOCKED, artifact=artifact, x=str(tmp_path / "x.npy"), result=result)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    np.testing.assert_array_equal(np.load(result), expected)


def test_blocker_really_blocks(tmp_path):
    """The child's finder does stop an import of a blocked module (so the test above means something)."""
    code = CHILD.split("import numpy as np")[0].format(blocked=BLOCKED) + "import onnx\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked" in proc.stderr
