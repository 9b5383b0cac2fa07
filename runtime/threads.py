"""Thread control: one number bounds both Numba's kernels and the BLAS that numpy's matmul calls.

Two thread pools must never take turns: OpenBLAS's idle workers spin for a long while after each
GEMM, and a Numba kernel launched next then waits for a core they hold (on a 2-core VM, a
conv stem alternating an im2col kernel with 2-thread GEMMs ran 100x slower than with one
thread). So during an inference BLAS runs with one thread, and Numba's pool does all the
parallel work, the large GEMMs included (each of its threads calls BLAS on a band,
runtime/kernels/dense.py).

Numba's OpenMP workers spin a short while after each parallel kernel before they sleep
(``GOMP_SPINCOUNT``, set in ``runtime/__init__.py`` before Numba starts its pool). A plan's
kernels follow each other microseconds apart, and waking a sleeping worker costs tens of
microseconds on a VM: with workers that slept at once (``OMP_WAIT_POLICY=PASSIVE`` alone), the
second thread made Bi-Real Net 18 only 1.2x faster, its 0.2-0.5 ms binary convs hardly at all.
The spin is short (3000 rounds, about 0.2 ms here): as long as the gaps between kernels, and
no longer, because a waiting thread that spins on a loaded machine takes the core from the
thread it waits for (30000 rounds gave the same speed on a quiet machine and several times
slower 2-thread runs beside two other busy processes).

``limit_threads(n)`` sets Numba's count (per calling thread) and the BLAS count (process-wide) for
one inference and restores the BLAS count after, so the user's own numpy work keeps its setting.

The BLAS library is found through ctypes among the shared libraries this process has loaded
(``/proc/self/maps`` on Linux) or next to numpy (its wheels' ``numpy.libs`` / ``.dylibs``). When no
OpenBLAS is found (MKL, Accelerate, a static build), BLAS threads are simply left alone.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

import numba
import numpy as np
from numba import njit, prange

# (set, get) symbol pairs: numpy's wheels bundle scipy-openblas (ILP64 symbols, suffix 64_);
# distribution builds link a plain OpenBLAS
_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)
_blas: list[tuple] | None = None  # found (set, get) function pairs, filled on first use


def _candidate_paths() -> list[str]:
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.rsplit(" ", 1)[-1].strip()
                if "blas" in os.path.basename(p).lower() and p not in paths:
                    paths.append(p)
    except OSError:
        pass
    import numpy

    root = os.path.dirname(os.path.dirname(numpy.__file__))
    for pattern in ("numpy.libs/*blas*", "numpy/.dylibs/*blas*"):
        paths += [p for p in sorted(glob.glob(os.path.join(root, pattern))) if p not in paths]
    return paths


def _find_blas() -> list[tuple]:
    found = []
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                found.append((setter, getter))
                break
    return found


def blas_libraries() -> list[tuple]:
    """The (set_num_threads, get_num_threads) functions of every OpenBLAS found (maybe none)."""
    global _blas
    if _blas is None:
        try:
            _blas = _find_blas()
        except Exception:  # a broken or exotic BLAS must never stop inference
            _blas = []
    return _blas


def max_threads() -> int:
    """The most threads a session may use: Numba's pool size (NUMBA_NUM_THREADS, default the
    number of cores)."""
    return numba.config.NUMBA_NUM_THREADS


_blas_users = 0  # inferences running now (sessions may run in several threads at once)
_blas_saved: list[tuple] = []  # the BLAS counts to restore when the last of them ends
_blas_lock = threading.Lock()


_current = threading.local()  # .threads: the count limit_threads set in this thread


def current_threads() -> int:
    """Numba's thread count in this thread: the one ``limit_threads`` set for the inference
    under way (read without the checks ``numba.get_num_threads`` makes on every call), else
    Numba's own."""
    n = getattr(_current, "threads", None)
    return numba.get_num_threads() if n is None else n


def numba_threads(n: int) -> None:
    """Numba's thread count in this thread set to ``n`` (a no-op when it is already: the check
    costs 0.1 us, entering and leaving ``limit_threads`` 0.6 us, a third of what a tiny model's
    run spends outside its plan). For code that reads no count of its own (a plan function,
    whose thread count is written into it) and never calls BLAS."""
    if getattr(_current, "numba", None) != n:
        numba.set_num_threads(n)
        _current.numba = n


class limit_threads:  # noqa: N801  (used like a function: ``with limit_threads(2): ...``)
    """Within the block: ``threads`` Numba threads in this thread, and one BLAS thread unless
    ``blas`` is False (code that never calls BLAS: runtime/blas.py, ``calls_gemm``)."""

    __slots__ = ("threads", "outer", "blas")

    def __init__(self, threads: int, blas: bool = True):
        self.threads = threads
        self.outer: int | None = None
        self.blas = blas

    def __enter__(self) -> None:
        global _blas_users
        numba_threads(self.threads)
        self.outer = getattr(_current, "threads", None)
        _current.threads = self.threads
        if not self.blas:
            return
        with _blas_lock:
            _blas_users += 1
            if _blas_users == 1:
                for setter, getter in blas_libraries():
                    before = getter()
                    if before != 1:
                        setter(1)
                        _blas_saved.append((setter, before))

    def __exit__(self, *exc) -> None:
        global _blas_users
        _current.threads = self.outer
        if not self.blas:
            return
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for setter, before in _blas_saved:
                    setter(before)
                _blas_saved.clear()


@njit(parallel=True, cache=True)
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1


def wake_pool() -> None:
    """Have the thread pool's workers running (a parallel no-op) when this thread uses several."""
    n = current_threads()
    if n > 1:
        _touch(np.zeros(n, np.int64))
