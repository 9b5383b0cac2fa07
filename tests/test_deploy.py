"""``bnnc deploy``: the folder holds the artifact, a copy of the runtime, run.py, the requirements
and a README; it runs with numpy and numba alone and gives onnxruntime's results; a failed deploy
leaves an existing folder as it was."""

from __future__ import annotations

import ast
import filecmp
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import runtime
from bnnc.deploy import MARKER, REQUIREMENTS, deploy
from cli import main
from tests.binary_mlp import binary_mlp
from tests.helpers import ort_run, save

BLOCKED = ("onnx", "onnxruntime", "onnx_ir", "click", "bnnc", "passes")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(onnx path, deploy folder, input path, onnxruntime's output)."""
    d = tmp_path_factory.mktemp("deploy")
    model = binary_mlp()
    path = save(model, str(d), "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((2, 40)).astype(np.float32)
    np.save(d / "x.npy", x)
    res = deploy(path, str(d / "out"))
    return path, res.path, str(d / "x.npy"), ort_run(model, {"x": x})[0]


def test_folder_contents(built):
    _, folder, _, _ = built
    names = set(os.listdir(folder))
    assert {"mlp.bnn", "runtime", "run.py", "requirements.txt", "README.md", MARKER} == names
    src = os.path.dirname(runtime.__file__)
    cmp = filecmp.dircmp(src, os.path.join(folder, "runtime"), ignore=["__pycache__"])
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    reqs = open(os.path.join(folder, "requirements.txt")).read().split()
    assert reqs == list(REQUIREMENTS) and [r.split("==")[0] for r in reqs] == ["numpy", "numba"]
    readme = open(os.path.join(folder, "README.md")).read()
    for step in ("python3 -m venv .venv", ".venv/bin/pip install -r requirements.txt", ".venv/bin/python run.py",
                 "run.py --warmup", "python -m runtime.warmup mlp.bnn", "--threads", "~/.cache/bnnc", "aarch64"):
        assert step in readme, step


def test_nothing_in_the_folder_imports_the_compiler(built):
    _, folder, _, _ = built
    checked = 0
    for d, _, files in os.walk(folder):
        for f in (f for f in files if f.endswith(".py")):
            tree = ast.parse(open(os.path.join(d, f)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    mods = [node.module or ""]
                else:
                    continue
                assert not [m for m in mods if m.partition(".")[0] in BLOCKED], (f, mods)
            checked += 1
    assert checked >= 10


def _run(args, folder, cache, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH", "BNNC_PLAN")}
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-I", *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def test_run_py_matches_onnxruntime_with_the_compiler_blocked(built, tmp_path):
    """run.py in a process where onnx, onnxruntime, click, bnnc and passes cannot be imported (``-I``:
    no PYTHONPATH, no user site; the folder itself provides ``runtime``)."""
    _, folder, x, expected = built
    block = ("import importlib.abc, runpy, sys\n"
             "class B(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             f"        if name.partition('.')[0] in {BLOCKED!r}: raise ImportError('blocked: ' + name)\n"
             "sys.meta_path.insert(0, B())\nsys.path.insert(0, '.')\n"
             f"sys.argv = ['run.py', '--input', {x!r}, '--save', {str(tmp_path / 'y.npz')!r}, '--repeat', '3']\n"
             "runpy.run_path('run.py', run_name='__main__')\n")
    r = _run(["-c", block], folder, tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "top classes" in r.stdout and "latency over 3 runs" in r.stdout
    (name,) = np.load(tmp_path / "y.npz").files
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")[name], expected, rtol=1e-5, atol=1e-5)


def test_cli_deploy_from_bnn_replaces_an_earlier_deploy(built, tmp_path):
    onnx_path, _, _, _ = built
    out = tmp_path / "dep"
    r = CliRunner().invoke(main, ["deploy", onnx_path, "-o", str(out)])
    assert r.exit_code == 0, r.output
    artifact = str(tmp_path / "again.bnn")
    os.rename(out / "mlp.bnn", artifact)
    r = CliRunner().invoke(main, ["deploy", artifact, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == sorted([".bnnc-deploy.json", "README.md", "again.bnn", "requirements.txt",
                                              "run.py", "runtime"])
    assert [p for p in os.listdir(tmp_path) if p.startswith(".dep.")] == []  # no temp folder left behind


def test_failed_deploy_leaves_the_existing_folder_intact(built, tmp_path):
    _, folder, _, _ = built
    names = sorted(os.listdir(folder))
    before = {f: open(os.path.join(folder, f), "rb").read() for f in ("mlp.bnn", "README.md")}
    bad = tmp_path / "bad.bnn"
    bad.write_bytes(b"BNNCART\0" + b"\0" * 40)
    r = CliRunner().invoke(main, ["deploy", str(bad), "-o", folder])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert {f: open(os.path.join(folder, f), "rb").read() for f in before} == before
    assert sorted(os.listdir(folder)) == names
    assert [p for p in os.listdir(os.path.dirname(folder)) if p.startswith(".out.")] == []


def test_refuses_an_existing_folder_that_is_not_a_deploy(built, tmp_path):
    onnx_path, _, _, _ = built
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(main, ["deploy", onnx_path, "-o", str(tmp_path / "mine")])
    assert r.exit_code == 2 and "not a bnnc deploy folder" in r.output
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    r = CliRunner().invoke(main, ["deploy", str(tmp_path / "nothing.onnx"), "-o", str(tmp_path / "new")])
    assert r.exit_code == 2 and "not found" in r.output and not (tmp_path / "new").exists()
