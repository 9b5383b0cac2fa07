"""runtime/blas.py: the GEMM that compiled kernels call, against numpy's matmul, with numpy's
OpenBLAS and with the Numba GEMM that replaces it when there is none (forced in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from numba import njit
from onnx import helper

import bnnc
from runtime import blas
from tests.helpers import ort_run
from tests.runtime.test_float_helpers import build, randn

# (m, n, k): empty and one-element sizes, odd ones around the Numba GEMM's 4-row and 512-column
# blocks, and k = 0 (the result is beta * c)
SHAPES = [(1, 1, 1), (3, 5, 7), (4, 512, 3), (5, 513, 9), (9, 1, 130), (0, 4, 3), (4, 0, 3), (2, 3, 0), (17, 70, 64)]


@njit
def _gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    blas.gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@njit
def _gemm_numba(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    blas._gemm_numba(m, n, k, alpha, a, lda, False, b, ldb, False, beta, c, ldc)


def _case(m, n, k, dtype, pad=3, seed=0):
    """Matrices stored inside wider ones (leading dimension = width + pad), as bands of a
    bigger matrix are; c full of NaN outside the result and, with beta = 0, inside it too."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k + pad)).astype(dtype)
    b = rng.standard_normal((k, n + pad)).astype(dtype)
    c = rng.standard_normal((m, n + pad)).astype(dtype)
    return a, b, c


@pytest.mark.parametrize("fn", [_gemm, _gemm_numba], ids=["blas", "numba"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemm_matches_numpy(fn, shape, beta):
    m, n, k = shape
    a, b, c = _case(m, n, k, np.float32)
    if beta == 0.0:
        c[:, :n] = np.nan  # never read
    want = 1.5 * a[:, :k].astype(np.float64) @ b[:, :n] + beta * np.nan_to_num(c[:, :n].astype(np.float64))
    tail = c[:, n:].copy()
    fn(m, n, k, 1.5, a.reshape(-1), a.shape[1], b.reshape(-1), b.shape[1], beta, c.reshape(-1), c.shape[1])
    np.testing.assert_allclose(c[:, :n], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(c[:, n:], tail)  # nothing written past each row


def test_gemm_float64_uses_the_numba_gemm():
    a, b, c = _case(6, 11, 13, np.float64)
    _gemm(6, 11, 13, 1.0, a.reshape(-1), a.shape[1], b.reshape(-1), b.shape[1], 0.0, c.reshape(-1), c.shape[1])
    np.testing.assert_allclose(c[:, :11], a[:, :13] @ b[:, :11], rtol=1e-12)


def test_numpy_openblas_is_bound_here():
    """numpy's wheels bundle OpenBLAS on x86-64 and AArch64, so the fallback must not be what
    this environment uses (a failure here means the symbol lookup broke)."""
    libs = [p for p in blas.blas_candidate_paths() if "openblas" in os.path.basename(p).lower()]
    if not libs:
        pytest.skip("this numpy has no OpenBLAS of its own")
    assert blas.BLAS != "numba"


FALLBACK = r"""
import numpy as np
from runtime import InferenceSession, blas
assert blas.BLAS == "numba", blas.BLAS
d = np.load(r"{data}")
sess = InferenceSession(r"{model}", threads=2, plan="emitted")
assert sess._plan is not None
(y,) = sess.run(None, {{"x": d["x"]}})
np.testing.assert_allclose(y, d["y"], rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_models_run_without_blas(tmp_path):
    """With BNNC_NO_BLAS=1 the runtime binds its Numba GEMM instead, and a conv + Gemm model
    still matches onnxruntime (in a fresh process: the symbol is bound at import)."""
    x = randn(2, 3, 12, 11)
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    inits = {"w": randn(8, 3, 3, 3, salt=1), "cb": randn(8, salt=2), "g": randn(5, 8 * 6 * 11, salt=3),
             "gb": randn(5, salt=4)}
    model = build(nodes, {"x": x}, inits)
    onnx_path = tmp_path / "m.onnx"
    onnx.save(model, onnx_path)
    art = bnnc.compile_model(str(onnx_path), str(tmp_path / "m.bnn")).path
    np.savez(tmp_path / "d.npz", x=x, y=ort_run(model, {"x": x})[0])
    env = dict(os.environ, BNNC_NO_BLAS="1")
    script = FALLBACK.format(data=tmp_path / "d.npz", model=art)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
