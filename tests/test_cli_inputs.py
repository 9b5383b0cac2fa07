"""What a new user runs into: input files and --input-shape checked against the model's declared
shapes, a compile that binarizes nothing, output files, versions, and the public API."""

import re
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import bnnc
from cli import popcount_isa
from tests.bnn_graphs import Builder
from tests.helpers import assert_cli_error, cli, make_model, needs_corpus, save

DIGITS = Path(__file__).parents[1].parent / "shared" / "corpus" / "digits_bnn" / "model.onnx"  # NHWC input
N = helper.make_node


def _npy(tmp_path, name, shape, seed=0):
    path = tmp_path / f"{name}.npy"
    np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return path


@pytest.fixture()
def bnn(tmp_path):
    """A small BNN with a dynamic batch: Sign -> binary conv -> BatchNorm -> Sign -> binary conv."""
    b = Builder(0)
    y = b.conv(b.sign(b.bn(b.conv(b.sign("x"), b.pm1((4, 3, 3, 3)), pads=[1, 1, 1, 1]), 4)), b.pm1((2, 4, 3, 3)))
    return save(b.model([("x", ["N", 3, 6, 6])], [(y, ["N", 2, 4, 4])]), str(tmp_path))


@pytest.mark.parametrize("shape", [(3, 3, 6, 2), (3, 6, 6, 3), (3, 3, 6)])
def test_verify_rejects_a_wrongly_shaped_input_like_run(tmp_path, bnn, shape):
    x = _npy(tmp_path, "x", shape)
    line = assert_cli_error(["verify", bnn, "--input", x], f"has shape {list(shape)}", "expects [N, 3, 6, 6]")
    assert cli("compile", bnn, "-o", tmp_path / "m.bnn")[0] == 0
    assert assert_cli_error(["run", tmp_path / "m.bnn", "--input", x]) == line


def test_verify_rejects_a_wrong_dtype_and_a_repeated_input(tmp_path, bnn):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3, 6, 6), np.float64))
    assert_cli_error(["verify", bnn, "--input", x], "dtype float64", "expects float32")
    good = _npy(tmp_path, "good", (2, 3, 6, 6))
    assert_cli_error(["verify", bnn, "--input", f"x={good}", "--input", f"x={good}"], "'x' is given more than once")


def test_input_shape_may_fix_dynamic_dims_only(tmp_path, bnn):
    assert_cli_error(["compile", bnn, "--input-shape", "x=2,3,6,5"], "expects [N, 3, 6, 6]")
    assert_cli_error(["verify", bnn, "--input-shape", "x=2,3,6"], "--input-shape gives shape [2, 3, 6]")
    assert cli("compile", bnn, "--input-shape", "x=2,3,6,6", "-o", tmp_path / "m.bnn")[0] == 0


@needs_corpus
def test_verify_on_the_digits_model_rejects_rgb_and_nchw_inputs(tmp_path):
    # the digits model expects [N, 8, 8, 1]; both used to verify "OK" on the file's shape
    for shape in [(3, 8, 8, 3), (3, 1, 8, 8)]:
        assert_cli_error(["verify", DIGITS, "--input", _npy(tmp_path, "x", shape)], "expects [N, 8, 8, 1]")


def test_samples_on_a_static_batch_model_says_what_it_does(tmp_path):
    b = Builder(1)
    y = b.conv(b.sign("x"), b.pm1((2, 3, 3, 3)))
    model = save(b.model([("x", [3, 3, 5, 5])], [(y, [3, 2, 3, 3])]), str(tmp_path))
    code, out, err = cli("verify", model, "--samples", 2)
    assert code == 0 and "batch size is fixed at 3" in err and "argmax agrees 6/6" not in out


def test_a_compile_without_binarizable_layers_says_why_and_runs(tmp_path):
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = save(make_model([N("Conv", ["x", "w"], ["c"], name="conv0"), N("Relu", ["c"], ["y"])],
                            [("x", [1, 3, 5, 5])], [("y", [1, 4, 3, 3])], {"w": w}), str(tmp_path))
    code, out, err = cli("compile", model, "-o", tmp_path / "f.bnn")
    assert code == 0 and "wrote" in out
    assert "no binarizable layer" in err and "conv0 (Conv): weights are not ±alpha" in err
    code, out, _ = cli("run", tmp_path / "f.bnn", "--input", _npy(tmp_path, "x", (1, 3, 5, 5)))
    assert code == 0 and "y: shape [1, 4, 3, 3]" in out
    code, out, _ = cli("inspect", tmp_path / "f.bnn")
    assert re.search(r"\d+\.\dx larger than the [\d,]+-byte ONNX model", out), out


def test_run_output_npy_is_a_real_npy_and_other_suffixes_are_refused(tmp_path, bnn):
    assert cli("compile", bnn, "-o", tmp_path / "m.bnn")[0] == 0
    x = _npy(tmp_path, "x", (2, 3, 6, 6))
    assert cli("run", tmp_path / "m.bnn", "--input", x, "--output", tmp_path / "y.npy")[0] == 0
    assert np.load(tmp_path / "y.npy").shape == (2, 2, 4, 4)
    assert_cli_error(["run", tmp_path / "m.bnn", "--input", x, "--output", tmp_path / "y.txt"], "must end in .npz")
    assert not (tmp_path / "y.txt").exists()


def test_version_names_the_stack_and_the_popcount_instructions():
    for flag in ("-V", "--version"):
        code, out, _ = cli(flag)
        assert code == 0 and out.startswith(f"bnnc {bnnc.__version__}")
        for dep in ("numpy", "numba", "llvmlite", "onnxruntime"):
            assert re.search(rf"\b{dep} \d", out), out
        assert "popcount:" in out


@pytest.mark.parametrize("machine,flags,isa", [
    ("x86_64", "flags\t: fpu sse4_2 popcnt avx2 avx512f avx512_vpopcntdq", "AVX-512 VPOPCNTDQ"),
    ("x86_64", "flags\t: fpu popcnt avx2", "AVX2 + POPCNT"),
    ("x86_64", "flags\t: fpu popcnt", "POPCNT"),
    ("aarch64", "Features\t: fp asimd evtstrm crc32", "NEON cnt"),
])
def test_popcount_isa_from_cpuinfo(machine, flags, isa):
    assert popcount_isa(machine, f"processor\t: 0\n{flags}\n") == isa


def test_the_package_shows_its_api_only():
    public = [n for n in dir(bnnc) if not n.startswith("_")]
    assert not {"os", "dataclass", "Callable", "annotations", "Sequence"} & set(public)
    assert {"compile", "compile_model", "BnncError", "CompileResult"} <= set(public)
