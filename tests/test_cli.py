"""The bnnc command: every bad input is one line `error: ...`, exit code 2, no traceback."""

import json
import os
import struct

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from cli import main
from runtime.artifact import _HEADER
from tests.helpers import make_model, save

N = helper.make_node
HEADER_BYTES = _HEADER.size


def bnnc(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_error(args, *needles):
    code, out, err = bnnc(*args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture()
def model_path(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["y"])]
    return save(make_model(nodes, [("x", ["N", 3, 5, 5])], [("y", ["N", 4, 5, 5])], {"w": w}), str(tmp_path))


@pytest.fixture()
def artifact(tmp_path, model_path):
    out = tmp_path / "m.bnn"
    assert bnnc("compile", model_path, "-o", out)[0] == 0
    return out


def test_compile_run_inspect_roundtrip(tmp_path, model_path, artifact):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = bnnc("run", artifact, "--input", tmp_path / "x.npy")
    assert code == 0 and "y: shape [2, 4, 5, 5] float32" in out
    code, out, _ = bnnc("run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "--output", tmp_path / "o.npz")
    assert code == 0
    assert np.load(tmp_path / "o.npz")["y"].shape == (2, 4, 5, 5)
    code, out, _ = bnnc("inspect", artifact, "--json")
    report = json.loads(out)
    assert code == 0 and report["total_macs"] == 1 * 4 * 25 * 27 and report["layers"][0]["mode"] == "float"
    assert {"binary_mac_fraction", "artifact_bytes", "fp32_bytes"} <= set(report)
    code, out, _ = bnnc("passes")
    assert code == 0 and "recognize-binary-layers" in out


def test_dump_passes(tmp_path, model_path):
    dump = tmp_path / "dump"
    assert bnnc("compile", model_path, "-o", tmp_path / "m.bnn", "--dump-passes", dump)[0] == 0
    files = sorted(os.listdir(dump))
    assert files[0] == "00_input.onnx" and "summary.json" in files
    summary = json.loads((dump / "summary.json").read_text())["passes"]
    for i, p in enumerate(summary, start=1):
        written = f"{i:02d}_{p['name']}.onnx" in files and f"{i:02d}_{p['name']}.txt" in files
        assert written == (p["dump"] is not None)  # a pass that changed nothing writes no copy
        assert {"modified", "stats", "op_counts", "seconds"} <= set(p)
    for f in files:
        if f.endswith(".onnx"):
            onnx.load(str(dump / f))


def test_not_onnx_and_truncated(tmp_path, model_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all \xff\xfe" * 10)
    assert_error(["compile", junk], "junk.onnx")
    data = open(model_path, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    assert_error(["compile", cut, "-o", tmp_path / "cut.bnn"], "cut.onnx")
    assert not (tmp_path / "cut.bnn").exists()
    assert_error(["compile", tmp_path / "missing.onnx"], "no such file")


def test_unsupported_ops_are_all_named(tmp_path):
    nodes = [N("Relu", ["x"], ["a"], name="ok"), N("Foo", ["a"], ["b"], name="foo_1", domain="my.domain"),
             N("Bar", ["b"], ["y"], name="bar_1", domain="my.domain")]
    model = make_model(nodes, [("x", [1, 3])], [("y", [1, 3])], extra_opsets={"my.domain": 1})
    path = save(model, str(tmp_path))
    line = assert_error(["compile", path, "-o", tmp_path / "o.bnn"], "foo_1", "bar_1", "Foo", "Bar")
    assert "unsupported" in line
    assert not (tmp_path / "o.bnn").exists()


def test_bad_run_inputs(tmp_path, artifact):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 5, 5), np.float32))
    np.save(tmp_path / "shape.npy", np.zeros((1, 3, 4, 5), np.float32))
    np.save(tmp_path / "dtype.npy", np.zeros((1, 3, 5, 5), np.float64))
    assert_error(["run", artifact, "--input", tmp_path / "nope.npy"], "nope.npy")
    assert_error(["run", artifact, "--input", f"z={tmp_path / 'x.npy'}"], "'z'")
    assert_error(["run", artifact, "--input", tmp_path / "shape.npy"], "shape")
    assert_error(["run", artifact, "--input", tmp_path / "dtype.npy"], "dtype")
    x = np.zeros((1, 3, 5, 5), np.float32)
    x[0, 1, 2, 3] = np.nan  # a float-only model is not refused: NaN goes through its float ops
    np.save(tmp_path / "nan.npy", x)
    assert bnnc("run", artifact, "--input", tmp_path / "nan.npy", "--output", tmp_path / "o.npz")[0] == 0


def test_non_finite_input_to_a_binary_model_is_an_error(tmp_path):
    out = tmp_path / "d.bnn"
    assert bnnc("compile", os.path.join(MODELS, "digits_bnn.onnx"), "-o", out)[0] == 0
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((1, 1, 8, 8), np.float32)
        x[0, 0, 2, 3] = bad
        np.save(tmp_path / "bad.npy", x)
        assert_error(["run", out, "--input", tmp_path / "bad.npy"], "NaN or Inf", "[0, 0, 2, 3]")


def _corrupt(src, dst, fn):
    data = bytearray(open(src, "rb").read())
    fn(data)
    open(dst, "wb").write(bytes(data))
    return dst


def test_corrupted_artifacts(tmp_path, artifact):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 5, 5), np.float32))
    x = tmp_path / "x.npy"

    def flip_in_tensor(d):
        (mlen,) = struct.unpack_from("<Q", d, 16)
        end = HEADER_BYTES + mlen
        start = end + (-end) % 64  # the data section; the first tensor starts there
        d[start + 5] ^= 0x01

    flipped = _corrupt(artifact, tmp_path / "flip.bnn", flip_in_tensor)
    assert_error(["run", flipped, "--input", x], "checksum")
    truncated = _corrupt(artifact, tmp_path / "cut.bnn", lambda d: d.__delitem__(slice(len(d) - 100, None)))
    assert_error(["run", truncated, "--input", x], "truncated")
    future = _corrupt(artifact, tmp_path / "v9.bnn", lambda d: d.__setitem__(slice(8, 12), struct.pack("<I", 9)))
    assert_error(["run", future, "--input", x], "version 9")
    old = _corrupt(artifact, tmp_path / "v1.bnn", lambda d: d.__setitem__(slice(8, 12), struct.pack("<I", 1)))
    assert_error(["run", old, "--input", x], "version 1", "recompile")
    manifest = _corrupt(artifact, tmp_path / "man.bnn", lambda d: d.__setitem__(HEADER_BYTES + 3, d[HEADER_BYTES + 3] ^ 1))
    assert_error(["run", manifest, "--input", x], "checksum mismatch in the manifest")
    assert_error(["inspect", truncated], "truncated")


MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def test_verify_and_inspect_on_a_bnn():
    code, out, _ = bnnc("verify", os.path.join(MODELS, "digits_bnn.onnx"), "--samples", "3")
    assert code == 0 and "OK" in out and " 0 of " in out and "bits differ" in out
    code, out, _ = bnnc("verify", os.path.join(MODELS, "bwn.onnx"), "--tolerance", "0")
    assert code == 1 and "MISMATCH" in out  # float layers round differently: nothing is exact there
    code, out, _ = bnnc("inspect", os.path.join(MODELS, "digits_bnn.onnx"), "--json")
    report = json.loads(out)
    assert code == 0
    for layer in report["layers"]:
        assert {"name", "op", "mode", "reason", "macs", "weight_bytes", "packed_weight_bytes"} <= set(layer)
    assert 0.9 < report["binary_mac_fraction"] < 1 and report["artifact_bytes"] * 10 < report["fp32_bytes"]
    code, out, _ = bnnc("inspect", os.path.join(MODELS, "digits_bnn.onnx"))
    assert code == 0 and "xnor" in out and "weights are not ±alpha" in out


def test_bench_reports_both_engines():
    # a smoke test of the command, not a timing: performance is measured by benchmarks, not tests
    code, out, _ = bnnc("bench", os.path.join(MODELS, "digits_bnn.onnx"), "--repeat", "3", "--warmup", "1", "--json")
    r = json.loads(out)
    assert code == 0 and r["bnnc"]["median_ms"] > 0 and r["onnxruntime"]["median_ms"] > 0 and r["speedup"] > 0
    assert r["max_abs_output_difference"] < 1e-3


def test_bench_profile_lists_every_kernel_of_the_plan(tmp_path):
    model = os.path.join(MODELS, "digits_bnn.onnx")
    code, out, _ = bnnc("bench", model, "--repeat", "3", "--warmup", "1", "--profile", "--json")
    r = json.loads(out)
    artifact = str(tmp_path / "d.bnn")
    assert bnnc("compile", model, "-o", artifact)[0] == 0
    plan = json.loads(bnnc("inspect", artifact, "--json")[1])["nodes"]
    assert code == 0 and [p["name"] for p in r["profile"]] == [n["name"] for n in plan]
    assert all(p["median_ms"] > 0 for p in r["profile"])
    code, out, _ = bnnc("bench", model, "--repeat", "3", "--warmup", "1", "--profile")
    assert code == 0 and "bnnc kernels, medians" in out and "bnnc.BinaryConv" in out


def test_output_cut_short_by_the_reader_is_not_an_error(model_path):
    """`bnnc inspect MODEL | head -1`: when the reader has gone away before bnnc writes, bnnc
    stops quietly with exit code 0 (no BrokenPipeError report)."""
    import subprocess
    import sys

    code = "import sys; from cli import main; sys.argv = ['bnnc', 'inspect', sys.argv[1]]; main()"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", code, str(model_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=root)
    proc.stdout.close()  # the reader is gone before the report is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and "error" not in err and "Traceback" not in err, err
