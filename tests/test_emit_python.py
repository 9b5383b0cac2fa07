"""`bnnc compile --emit-python DIR`: the generated code written out as a module whose `run(feeds)`
gives the artifact's outputs, bit for bit (the same code with the same constants)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from runtime import BnncError, InferenceSession
from tests.bnn_graphs import Builder
from tests.helpers import CORPUS, save


def _bnn(tmp_path: Path) -> str:
    """Sign -> 3x3 binary conv -> BatchNorm -> Sign -> strided binary conv -> BatchNorm, with zero
    padding and exact zeros in the input: both BinaryConv paths, thresholds, masks."""
    b = Builder(seed=3)
    y = b.bn(b.conv(b.sign("x"), b.pm1((16, 16, 3, 3)), pads=[1, 1, 1, 1]), 16)
    y = b.bn(b.conv(b.sign(y, "bitorch"), b.pm1((96, 16, 3, 3)), pads=[1, 0, 1, 1], strides=[2, 1]), 96)
    return save(b.model([("x", [1, 16, 12, 12])], [(y, None)]), str(tmp_path))


def _emit_and_load(tmp_path: Path, onnx_path: str, name: str):
    out = tmp_path / (name + ".bnn")
    res = CliRunner().invoke(main, ["compile", onnx_path, "-o", str(out), "--emit-python", str(tmp_path / "py")])
    assert res.exit_code == 0, res.output
    spec = importlib.util.spec_from_file_location(name, tmp_path / "py" / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, str(out)


def test_emitted_module_gives_the_artifacts_outputs(tmp_path):
    module, artifact = _emit_and_load(tmp_path, _bnn(tmp_path), "bnn_emitted")
    text = Path(module.__file__).read_text()
    assert "def run_plan(" in text and "def run(feeds: dict) -> list:" in text
    assert "(bnnc.BinaryConv)" in text  # every step's block names its node and op
    x = np.random.default_rng(0).normal(size=(1, 16, 12, 12)).astype(np.float32)
    x[:, :, ::4] = 0
    ours = InferenceSession(artifact, plan="emitted").run(None, {"x": x})
    steps = InferenceSession(artifact, plan="steps").run(None, {"x": x})
    np.testing.assert_array_equal(steps[0], ours[0])
    emitted = module.run({"x": x})
    assert len(ours) == len(emitted) == 1
    np.testing.assert_array_equal(emitted[0], ours[0])


def test_emitted_module_checks_its_inputs(tmp_path):
    module, _ = _emit_and_load(tmp_path, _bnn(tmp_path), "bnn_checked")
    with pytest.raises(ValueError, match="must be float32"):
        module.run({"x": np.zeros((1, 16, 12, 11), np.float32)})


@pytest.mark.skipif(not (CORPUS / "brevitas_tfc_1w1a_qonnx").is_dir(), reason="needs ../shared/corpus")
def test_emitted_corpus_model(tmp_path):
    case = CORPUS / "brevitas_tfc_1w1a_qonnx"
    module, artifact = _emit_and_load(tmp_path, str(case / "model.onnx"), "tfc_emitted")
    x = np.load(case / "input.npy")
    np.testing.assert_array_equal(module.run({"x": x})[0], InferenceSession(artifact, plan="emitted").run(None, {"x": x})[0])


def _outputs_of_every_kind(tmp_path: Path) -> str:
    """A binarizing net whose graph outputs are a view of its input, a view of a computed
    buffer, a computed buffer, and a constant: every place a plan function leaves an output."""
    b = Builder(seed=5)
    y = b.bn(b.conv(b.sign("x"), b.pm1((8, 4, 3, 3)), pads=[1, 1, 1, 1]), 8)
    x_view = b.op("Reshape", ["x", b.const(np.array([4, 36], np.int64))])
    r_flat = b.op("Flatten", [b.op("Relu", [y])])
    const = b.const(np.arange(6, dtype=np.float32).reshape(2, 3), "const_out")
    return save(b.model([("x", [1, 4, 6, 6])], [(x_view, None), (y, None), (r_flat, None), (const, [2, 3])]),
                str(tmp_path))


def test_outputs_where_the_plan_leaves_them(tmp_path):
    """The plan function returns only a status; the session and the written-out module take each
    output from where it lies (an input, a buffer, a constant, seen through a reshape), equal to
    onnxruntime's and to the steps run one by one; an input with NaN is refused by the plan's
    first lines, by both."""
    from tests.helpers import ort_run

    onnx_path = _outputs_of_every_kind(tmp_path)
    module, artifact = _emit_and_load(tmp_path, onnx_path, "every_output")
    sess = InferenceSession(artifact, plan="emitted")
    assert sorted(kind for kind, _ in sess._plan.outputs) == ["const", "input", "slot", "slot"]
    x = np.random.default_rng(1).normal(size=(1, 4, 6, 6)).astype(np.float32)
    ours = sess.run(None, {"x": x})
    again = sess.run(None, {"x": x * 2})  # copies, not the workspace: the first results stay
    steps = InferenceSession(artifact, plan="steps").run(None, {"x": x})
    ref = ort_run(onnx.load(onnx_path), {"x": x})
    for a, s, e, r in zip(ours, steps, module.run({"x": x}), ref, strict=True):
        np.testing.assert_array_equal(a, s)
        np.testing.assert_array_equal(a, e)
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again[0], (x * 2).reshape(4, 36))
    assert not np.shares_memory(ours[0], x)
    x[0, 1, 2, 3] = np.inf
    with pytest.raises(BnncError, match=r"input 'x' holds NaN or Inf .*index \[0, 1, 2, 3\]"):
        sess.run(None, {"x": x})
    with pytest.raises(ValueError, match="input 'x' holds NaN or Inf"):
        module.run({"x": x})
