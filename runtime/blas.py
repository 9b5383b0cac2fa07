"""Single-precision GEMM for Numba code: numpy's own OpenBLAS, called from inside @njit.

``gemm(a, b, c, beta)`` computes ``c = a @ b + beta * c`` for 2-D float32 arrays whose rows are
contiguous (row strides may be larger than the rows: bands of a bigger matrix), from any
@njit function, serial or inside ``prange``. numpy's matmul is not available in nopython mode
without SciPy, which the runtime must not import; instead the ``cblas_sgemm`` of the OpenBLAS
that numpy's wheels bundle (scipy-openblas, on x86-64 and AArch64 alike) is found with ctypes,
as runtime/threads.py finds its thread setters, and bound as the symbol ``bnnc_sgemm``, which
the compiled code calls by name.

The symbol always has the ILP64 cblas signature (64-bit sizes, 32-bit enums). What it is bound
to depends on the numpy installed:

* an ILP64 cblas_sgemm (``scipy_cblas_sgemm64_``, ``cblas_sgemm64_``): bound directly;
* an LP64 one (``scipy_cblas_sgemm``, ``cblas_sgemm``): a compiled shim that narrows the sizes;
* none (numpy on MKL or Accelerate, a static build; or ``BNNC_NO_BLAS=1``): a register-blocked
  GEMM written in Numba (``_gemm_numba``), slower but exact to float rounding.

So every compiled function that calls ``gemm`` has the same machine code whatever the BLAS, and
Numba's on-disk cache (shared by every Python environment of one runtime version) stays valid
when one environment has OpenBLAS and another not. The symbol is bound when this module is
imported, before any cached function that calls it is loaded: the kernel modules import it.

During an inference BLAS runs single-threaded (runtime/threads.py, ``limit_threads``); the
kernels split large products into bands, one ``gemm`` call per band, over Numba's threads.
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding as ll
import numpy as np
from numba import carray, cfunc, njit, types
from numba.extending import overload

from runtime.threads import _candidate_paths as blas_candidate_paths

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # the cblas enum values
_SYMBOL = "bnnc_sgemm"
_ILP64 = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")
_LP64 = ("scipy_cblas_sgemm", "cblas_sgemm")

_i32, _i64, _f32, _pf = types.int32, types.int64, types.float32, types.CPointer(types.float32)
_SIG64 = types.void(_i32, _i32, _i32, _i64, _i64, _i64, _f32, _pf, _i64, _pf, _i64, _f32, _pf, _i64)
_SIG32 = types.void(_i32, _i32, _i32, _i32, _i32, _i32, _f32, _pf, _i32, _pf, _i32, _f32, _pf, _i32)
_sgemm = types.ExternalFunction(_SYMBOL, _SIG64)
_sgemm_lp64 = types.ExternalFunction(_SYMBOL + "_lp64", _SIG32)
_NB = 512  # columns of one block of the Numba GEMM (4 rows x 512 floats of accumulators: 8 KB, in L1)


@njit(cache=True, nogil=True)
def _gemm_numba(m, n, k, alpha, a, lda, ta, b, ldb, tb, beta, c, ldc):
    """Row-major c = alpha * op(a) @ op(b) + beta * c over flat arrays with leading dimensions
    lda, ldb, ldc; op transposes when ta / tb. Four rows of c at a time accumulate in a block of
    _NB columns: each element of b read feeds four multiply-adds, and the column loop vectorizes.
    beta == 0 never reads c (it may hold garbage, NaN included), as BLAS does."""
    acc = np.empty((4, _NB), c.dtype)
    bt = np.empty(_NB, b.dtype)
    for j0 in range(0, n, _NB):
        nb = min(_NB, n - j0)
        for i0 in range(0, m, 4):
            mb = min(4, m - i0)
            acc[:, :nb] = 0
            for p in range(k):
                if tb:
                    for j in range(nb):
                        bt[j] = b[(j0 + j) * ldb + p]
                    brow = bt
                else:
                    brow = b[p * ldb + j0:]
                av = np.zeros(4, a.dtype)
                for r in range(mb):
                    av[r] = a[p * lda + i0 + r] if ta else a[(i0 + r) * lda + p]
                a0, a1, a2, a3 = av[0], av[1], av[2], av[3]
                r0, r1, r2, r3 = acc[0], acc[1], acc[2], acc[3]
                for j in range(nb):
                    v = brow[j]
                    r0[j] += a0 * v
                    r1[j] += a1 * v
                    r2[j] += a2 * v
                    r3[j] += a3 * v
            for r in range(mb):
                row = c[(i0 + r) * ldc + j0:]
                ar = acc[r]
                if beta == 0:
                    for j in range(nb):
                        row[j] = alpha * ar[j]
                else:
                    for j in range(nb):
                        row[j] = alpha * ar[j] + beta * row[j]


@njit(cache=True, nogil=True)
def _extent(rows, cols, ld):
    return 0 if rows == 0 or cols == 0 else (rows - 1) * ld + cols


def _sgemm_fallback(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The cblas signature over ``_gemm_numba`` (row-major only: the only order gemm uses)."""
    if m == 0 or n == 0:
        return
    ra, ca = (k, m) if ta == TRANS else (m, k)
    rb, cb = (n, k) if tb == TRANS else (k, n)
    A = carray(a, (max(1, _extent(ra, ca, lda)),))
    B = carray(b, (max(1, _extent(rb, cb, ldb)),))
    C = carray(c, (_extent(m, n, ldc),))
    _gemm_numba(m, n, k, alpha, A, lda, ta == TRANS, B, ldb, tb == TRANS, beta, C, ldc)


def _sgemm_narrow(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The ILP64 signature over an LP64 cblas_sgemm."""
    _sgemm_lp64(order, ta, tb, np.int32(m), np.int32(n), np.int32(k), alpha, a, np.int32(lda), b, np.int32(ldb),
                beta, c, np.int32(ldc))


def _find() -> tuple[str, int, bool] | None:
    """(where, address, ilp64) of the first cblas_sgemm found in the BLAS libraries numpy uses."""
    for path in blas_candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for names, ilp64 in ((_ILP64, True), (_LP64, False)):
            for name in names:
                if hasattr(lib, name):
                    return f"{name} in {os.path.basename(path)}", ctypes.cast(getattr(lib, name), ctypes.c_void_p).value, ilp64
    return None


def _bind() -> str:
    """Bind ``bnnc_sgemm``; returns what it was bound to."""
    found = None
    if os.environ.get("BNNC_NO_BLAS", "") in ("", "0"):
        try:
            found = _find()
        except Exception:  # an exotic BLAS must never stop the runtime: the Numba GEMM serves
            found = None
    if found is None:
        ll.add_symbol(_SYMBOL, _compiled(_sgemm_fallback).address)
        return "numba"
    where, address, ilp64 = found
    if ilp64:
        ll.add_symbol(_SYMBOL, address)
    else:  # the shim's symbol first: compiling it links it
        ll.add_symbol(_SYMBOL + "_lp64", address)
        ll.add_symbol(_SYMBOL, _compiled(_sgemm_narrow).address)
    return where


_keep: list = []  # the compiled shims, alive as long as the symbol points at them


def _compiled(fn):
    """A C-callable compiled ``fn`` with the cblas signature, made only when needed (compiling
    the LP64 shim needs its symbol bound)."""
    f = cfunc(_SIG64, cache=True, nopython=True)(fn)
    _keep.append(f)
    return f


BLAS = _bind()  # "numba" (the fallback) or which cblas_sgemm serves


@njit(cache=True, nogil=True)
def sgemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c = alpha * a @ b + beta * c, float32, through ``bnnc_sgemm`` (see ``gemm``)."""
    if m == 0 or n == 0:
        return
    _sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, np.float32(alpha), a.ctypes, max(lda, k, 1), b.ctypes,
           max(ldb, n, 1), np.float32(beta), c.ctypes, max(ldc, n, 1))


def gemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """c = alpha * a @ b + beta * c, row-major, over 1-D arrays that start at the first element
    of each matrix, with leading dimensions lda >= k, ldb >= n, ldc >= n; with beta == 0, c is
    only written. The caller makes sure each array holds its matrix. float32 goes to BLAS,
    other float types to the Numba GEMM. For compiled code only (``overload`` below)."""
    raise NotImplementedError("runtime.blas.gemm is called from Numba code only")


def calls_gemm(f) -> bool:
    """Whether the compiled function ``f`` (a Numba dispatcher) calls ``gemm`` in its own body:
    a plan none of whose functions do never enters BLAS, so its inference need not limit BLAS's
    threads (runtime/threads.py; two microseconds a run, a tenth of a tiny model's)."""
    py = getattr(f, "py_func", None)
    return py is not None and any(py.__globals__.get(n) is gemm for n in py.__code__.co_names)


@overload(gemm, jit_options={"nogil": True})
def _gemm_typed(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if all(t.dtype == types.float32 for t in (a, b, c)):
        return lambda m, n, k, alpha, a, lda, b, ldb, beta, c, ldc: sgemm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return lambda m, n, k, alpha, a, lda, b, ldb, beta, c, ldc: _gemm_numba(m, n, k, alpha, a, lda, False, b, ldb,
                                                                           False, beta, c, ldc)
