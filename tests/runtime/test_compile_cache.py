"""The compile message and the kernel cache, each in fresh processes with a cache of their own.

A first run compiles and says so on stderr; a second process with the same cache loads the
kernels and prints nothing of it; ``python -m runtime.warmup`` fills the cache for every later
run; three processes starting at once on an empty cache all give onnxruntime's result and leave
a cache the next process uses without compiling; the runtime folder may be read-only; where the
user cache cannot be written, a private folder in the temporary directory takes its place.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bnnc.deploy import deploy
from runtime.progress import CompileReport
from tests.binary_mlp import binary_mlp
from tests.helpers import ort_run, save

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESSAGE = "compiling kernels for this CPU, first run only"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(deploy folder, input path, onnxruntime's output) of a two-layer binary MLP."""
    d = tmp_path_factory.mktemp("cache")
    model = binary_mlp()
    x = np.random.default_rng(5).standard_normal((2, 40)).astype(np.float32)
    np.save(d / "x.npy", x)
    return deploy(save(model, str(d)), str(d / "dep")).path, str(d / "x.npy"), ort_run(model, {"x": x})[0]


def python(args, cwd, cache, wait=True, prefix=()):
    # BNNC_PLAN out too: the child runs the default plan, as on a device (tests/conftest.py sets it)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "BNNC_QUIET", "BNNC_PLAN")}
    env["XDG_CACHE_HOME"] = str(cache)
    cmd = [*prefix, sys.executable, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def silent(stderr: str) -> bool:
    """Nothing of the compile report: neither its header nor a progress line."""
    return MESSAGE not in stderr and not any(line.startswith("  [") for line in stderr.splitlines())


def saved(path):
    with np.load(path) as z:
        return z[z.files[0]]


def test_first_run_says_it_compiles_second_process_says_nothing(folder, tmp_path):
    dep, x, expected = folder
    first = python(["run.py", "--input", x, "--repeat", "1", "--save", str(tmp_path / "a.npz")], dep, tmp_path / "c")
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("bnnc: " + MESSAGE) and "  [1] " in first.stderr
    second = python(["run.py", "--input", x, "--repeat", "1", "--save", str(tmp_path / "b.npz")], dep, tmp_path / "c")
    assert second.returncode == 0, second.stderr
    assert silent(second.stderr)
    np.testing.assert_allclose(saved(tmp_path / "a.npz"), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(saved(tmp_path / "b.npz"), saved(tmp_path / "a.npz"))


def test_warmup_fills_the_cache_for_the_cli(folder, tmp_path):
    dep, x, _ = folder
    artifact = os.path.join(dep, "model.bnn")
    warm = python(["-m", "runtime.warmup", artifact], REPO, tmp_path / "c")
    assert warm.returncode == 0, warm.stderr
    assert MESSAGE in warm.stderr and "kernels ready" in warm.stdout
    run = python(["cli.py", "run", artifact, "--input", x], REPO, tmp_path / "c")
    assert run.returncode == 0, run.stderr
    assert silent(run.stderr) and "shape [2, 5]" in run.stdout
    bad = python(["-m", "runtime.warmup", str(tmp_path / "none.bnn")], REPO, tmp_path / "c")
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot read artifact")


def test_concurrent_first_runs_share_one_cache(folder, tmp_path):
    dep, x, expected = folder
    procs = [python(["run.py", "--input", x, "--repeat", "1", "--save", str(tmp_path / f"{i}.npz")], dep,
                    tmp_path / "c", wait=False) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for i in range(3):
        np.testing.assert_allclose(saved(tmp_path / f"{i}.npz"), expected, rtol=1e-5, atol=1e-5)
    after = python(["run.py", "--input", x, "--repeat", "1", "--save", str(tmp_path / "3.npz")], dep, tmp_path / "c")
    assert after.returncode == 0 and silent(after.stderr)
    np.testing.assert_array_equal(saved(tmp_path / "3.npz"), saved(tmp_path / "0.npz"))
    files = [f for _, _, fs in os.walk(tmp_path / "c") for f in fs]
    # no temporary leftovers: Numba's index and code files, and the generated plan modules
    assert files and all(f.endswith((".nbi", ".nbc")) or (f.startswith("bnnc_plan_") and f.endswith(".py"))
                         for f in files), files


def _read_only(path: str):
    """A command prefix under which ``path`` is read-only, even for root (a read-only bind mount
    in a private mount namespace); for other users the permission bits do it."""
    if os.geteuid() != 0:
        for d, _, files in os.walk(path):
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
            os.chmod(d, 0o555)
        return ()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind '{path}' '{path}' && "
                            f"mount -o remount,ro,bind '{path}' && ! touch '{path}/w' 2>/dev/null"],
                           capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"running as root without a way to make a folder read-only here ({probe.stderr.strip()[:80]})")
    return ("unshare", "-m", "sh", "-c", f"mount --bind '{path}' '{path}' && mount -o remount,ro,bind '{path}' && "
            'exec "$0" "$@"')


def test_read_only_runtime_folder(folder, tmp_path):
    dep, x, expected = folder
    ro = str(tmp_path / "ro")
    shutil.copytree(dep, ro)
    prefix = _read_only(ro)
    args = ["run.py", "--input", x, "--repeat", "1", "--save", str(tmp_path / "y.npz")]
    first = python(args, ro, tmp_path / "c", prefix=prefix)
    assert first.returncode == 0, first.stderr
    assert MESSAGE in first.stderr and str(tmp_path / "c") in first.stderr
    second = python(args, ro, tmp_path / "c", prefix=prefix)
    assert second.returncode == 0 and silent(second.stderr)
    np.testing.assert_allclose(saved(tmp_path / "y.npz"), expected, rtol=1e-5, atol=1e-5)
    assert not [d for d, _, _ in os.walk(ro) if d.endswith("__pycache__")]  # Python could not write there
    for d, _, _ in os.walk(ro):
        os.chmod(d, 0o755)  # let the test's temporary folder be removed


def test_unwritable_user_cache_falls_back_to_a_private_temp_folder(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "file"), TMPDIR=str(tmp_path / "t"))
    env.pop("NUMBA_CACHE_DIR", None)
    (tmp_path / "t").mkdir()
    code = "import runtime, numba; print(numba.config.CACHE_DIR)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / "t" / f"bnnc-{os.getuid()}" / "kernels-"))
    os.chmod(tmp_path / "t" / f"bnnc-{os.getuid()}", 0o777)  # others could plant code there now: not used
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stdout.strip().startswith(str(tmp_path / "t"))


def _event(module: str, name: str, start: bool):
    fn = SimpleNamespace(__module__=module, __qualname__=name, __code__=SimpleNamespace(co_filename="/elsewhere.py"))
    return SimpleNamespace(data={"dispatcher": SimpleNamespace(py_func=fn)}, is_start=start, is_end=not start)


def test_report_counts_the_runtimes_functions_only():
    out = io.StringIO()
    rep = CompileReport(out)
    rep.on_start(_event("mylib", "user_fn", True))  # the application's own Numba code: silent
    rep.on_end(_event("mylib", "user_fn", False))
    assert out.getvalue() == "" and rep.count == 0
    rep.on_start(_event("runtime.kernels.binary_dense", "_dense", True))
    rep.on_start(_event("numba.np.arrayobj", "impl", True))  # Numba's library inside it: in its time
    rep.on_end(_event("numba.np.arrayobj", "impl", False))
    rep.on_end(_event("runtime.kernels.binary_dense", "_dense", False))
    rep.on_start(_event("runtime.kernels.sign", "_sign", True))
    rep.on_end(_event("runtime.kernels.sign", "_sign", False))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("bnnc: " + MESSAGE) and len(lines) == 3
    assert lines[1].startswith("  [1] binary_dense._dense (") and lines[2].startswith("  [2] sign._sign (")


def test_a_new_process_removes_kernel_folders_unused_for_a_month(tmp_path):
    cache = tmp_path / "bnnc"
    cache.mkdir()
    month_ago = time.time() - 31 * 86400
    for name, age in (("kernels-old", month_ago), ("kernels-recent", time.time() - 86400), ("kept-other", month_ago)):
        (cache / name).mkdir()
        (cache / name / "entry.nbi").write_text("x")
        os.utime(cache / name, (age, age))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    code = "import runtime, numba; print(numba.config.CACHE_DIR)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mine = r.stdout.strip()
    assert os.path.dirname(mine) == str(cache)
    left = sorted(os.listdir(cache))
    assert left == sorted(["kernels-recent", "kept-other", os.path.basename(mine)])
    os.utime(mine, (month_ago, month_ago))  # a month later, a load marks its own folder used again
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and os.path.getmtime(mine) > month_ago + 86400


def test_the_helper_process_compiles_every_kernel_of_the_plan(folder, tmp_path):
    """``python -m runtime.prefetch`` (which a first run starts beside its plan's compile) types
    the plan's steps from the last one back: afterwards a new process compiles only its plan
    function, every kernel comes from the cache, and the result is onnxruntime's."""
    dep, x, expected = folder
    artifact = os.path.join(dep, "model.bnn")
    helper = python(["-m", "runtime.prefetch", artifact, "1"], REPO, tmp_path / "c")
    assert helper.returncode == 0 and "  [1] " in helper.stderr and "Warning" not in helper.stderr, helper.stderr
    code = ("import sys, numpy as np; from runtime import InferenceSession; "
            "s = InferenceSession(sys.argv[1], threads=1); np.save(sys.argv[3], s.run(None, {'x': np.load(sys.argv[2])})[0])")
    env_off = ("env", "BNNC_PREFETCH=0")
    run = python(["-c", code, artifact, x, str(tmp_path / "y.npy")], REPO, tmp_path / "c", prefix=env_off)
    assert run.returncode == 0, run.stderr
    compiled = [line for line in run.stderr.splitlines() if line.startswith("  [")]
    assert ".run_plan (" in compiled[-1], run.stderr  # and before it only the input check, which runs before the plan
    assert all(" validate." in line for line in compiled[:-1]), run.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-5)
