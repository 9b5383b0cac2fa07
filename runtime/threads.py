"""Thread control: one number bounds both Numba's kernels and the BLAS that numpy's matmul calls.

Numba's ``set_num_threads`` is per calling thread; the BLAS thread count (numpy's bundled
OpenBLAS, or a system OpenBLAS numpy was built against) is process-wide. Without a bound the two
pools together run more busy threads than there are cores, and on a small machine each waits
for the other's cores: a 2-core VM ran a 224x224 stem 10-100x slower than with one thread.
``limit_threads(n)`` sets both for the duration of one inference and restores the BLAS count after, so
the user's own numpy work keeps its setting.

The BLAS library is found through ctypes among the shared libraries this process has loaded
(``/proc/self/maps`` on Linux) or next to numpy (its wheels' ``numpy.libs`` / ``.dylibs``). When no
OpenBLAS is found (MKL, Accelerate, a static build), BLAS threads are simply left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from collections.abc import Iterator

import numba

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


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` Numba threads (in this thread) and BLAS threads."""
    numba.set_num_threads(threads)
    saved = []
    for setter, getter in blas_libraries():
        before = getter()
        if before != threads:
            setter(threads)
            saved.append((setter, before))
    try:
        yield
    finally:
        for setter, before in saved:
            setter(before)
