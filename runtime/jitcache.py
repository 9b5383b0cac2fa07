"""Where Numba caches the compiled kernels: a directory per version of the runtime's source.

Numba's on-disk cache (``cache=True``) checks only the source file of the function it compiled:
a kernel that inlines a helper from another module keeps the old helper's machine code after
that module changes, and would compute with it. So unless the user chose a cache directory
(``NUMBA_CACHE_DIR``), the kernels are cached under a directory named by a hash of every source
file of the runtime: any change to any of them starts a fresh cache. Each load marks its folder
as used; folders of other versions that no runtime has used for STALE_DAYS are removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

import numba

STALE_DAYS = 30  # a kernel folder no runtime has loaded for this long is removed


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


def user_temp_dir() -> str:
    """This user's folder in the shared temporary directory (checked by ``writable_dir``)."""
    return os.path.join(tempfile.gettempdir(), f"bnnc-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


def writable_dir(path: str, private: str | None = None) -> bool:
    """Make ``path``; True when this process can write there. ``private``, a parent of
    ``path`` in a shared directory, must belong to this user and be closed to others (nobody
    else may plant machine code in the cache)."""
    try:
        if private is not None:  # checked before anything is made inside it
            os.makedirs(private, mode=0o700, exist_ok=True)  # (makedirs would give it the umask's mode)
            st = os.stat(private)
            if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
                return False
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def use_versioned_cache() -> None:
    """Point Numba's cache at ``<user cache>/bnnc/kernels-<digest>`` unless the user set one.

    The runtime's own folder is never written to, so it may be read-only (a system-wide install,
    a read-only image). Where the user cache cannot be written either (no home, a read-only one),
    a per-user folder in the temporary directory takes its place; without any, Numba's default
    stays. Processes starting at once share the folder safely: Numba writes every cache file to a
    temporary name and renames it into place, so a reader sees a whole entry or none.
    """
    if os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR:
        return
    name = "kernels-" + source_digest(os.path.dirname(os.path.abspath(__file__)))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    shared = user_temp_dir()
    for path, private in ((os.path.join(base, "bnnc", name), None), (os.path.join(shared, name), shared)):
        if writable_dir(path, private):
            numba.config.CACHE_DIR = path
            prune_stale(path)
            return


def prune_stale(path: str, max_age_days: float = STALE_DAYS) -> list[str]:
    """Mark ``path`` (a ``kernels-<digest>`` folder) as used now and remove its siblings that no
    runtime has used for ``max_age_days``: every upgrade of the runtime starts a new folder (tens of
    MB per model), and nothing else would ever delete the old ones. A runtime of another version
    still in use touches its own folder each time it loads, so it keeps it. Returns the removed
    folders; a folder that cannot be removed is left as it is."""
    try:
        os.utime(path)
        parent = os.path.dirname(path)
        siblings = [os.path.join(parent, d) for d in os.listdir(parent) if d.startswith("kernels-")]
    except OSError:
        return []
    cutoff = time.time() - max_age_days * 86400
    removed = []
    for d in siblings:
        try:
            stale = d != path and os.path.getmtime(d) < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
