"""Where Numba caches the compiled kernels: a directory per version of the runtime's source.

Numba's on-disk cache (``cache=True``) checks only the source file of the function it compiled:
a kernel that inlines a helper from another module keeps the old helper's machine code after
that module changes, and would compute with it. So unless the user chose a cache directory
(``NUMBA_CACHE_DIR``), the kernels are cached under a directory named by a hash of every source
file of the runtime: any change to any of them starts a fresh cache.
"""

from __future__ import annotations

import hashlib
import os

import numba


def source_digest(root: str) -> str:
    """A short hash of every .py file under ``root`` (names and contents)."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def use_versioned_cache() -> None:
    """Point Numba's cache at ``<user cache>/bnnc/kernels-<digest>`` unless the user set one (or
    the directory cannot be made: Numba's default then stays)."""
    if os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "bnnc", "kernels-" + source_digest(os.path.dirname(os.path.abspath(__file__))))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return
    numba.config.CACHE_DIR = path
