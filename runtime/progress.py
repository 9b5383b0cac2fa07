"""Tell the user, on stderr, when the runtime compiles machine code for this CPU.

The first run of a model on a machine compiles its kernels with Numba (tens of seconds, minutes
on a small board); later runs load them from the on-disk cache (runtime/jitcache.py) in well under
a second. Without a word that first wait looks like a hang. So a listener on Numba's
``numba:compile`` event, which Numba broadcasts only when it really compiles (a cache hit returns
before it), prints once per process::

    bnnc: compiling kernels for this CPU, first run only (cached in ~/.cache/bnnc/...) ...

and then one line per compiled function with a running count and its time (on a terminal, one
line rewritten in place). When everything comes from the cache nothing is printed at all.

Only the runtime's own functions count: those from the runtime's package, or whose source file
lies in the runtime's folder or in the kernel cache (where generated code lives). What Numba
compiles inside them for its own library (``min``, ``np.empty``...) counts in their time, and the
user's own Numba code stays silent. (Failed compiles are not told apart: Numba 0.68's
``Event.is_failed`` is inverted, and a failed compile raises anyway.) ``BNNC_QUIET=1`` silences
the report. Compiles hold Numba's global compiler lock, so the events arrive one at a time.
"""

from __future__ import annotations

import os
import sys
import time

import numba
from numba.core import event

_PACKAGE = __name__.partition(".")[0]
_HERE = os.path.dirname(os.path.abspath(__file__))


def _cache_dir() -> str:
    return os.path.abspath(os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR or _HERE)


def _is_ours(dispatcher) -> bool:
    fn = getattr(dispatcher, "py_func", None)
    if fn is None:
        return False
    module = getattr(fn, "__module__", "") or ""
    if module == _PACKAGE or module.startswith(_PACKAGE + "."):
        return True
    filename = os.path.abspath(getattr(getattr(fn, "__code__", None), "co_filename", "") or "")
    return any(filename.startswith(d + os.sep) for d in (_HERE, _cache_dir()))


def _describe(dispatcher) -> str:
    fn = getattr(dispatcher, "py_func", None)
    module = (getattr(fn, "__module__", "") or "").rpartition(".")[2]
    name = getattr(fn, "__qualname__", "") or getattr(dispatcher, "__name__", "?")
    return f"{module}.{name}" if module else name


class CompileReport(event.Listener):
    """Prints the compile header once per process and a progress line per compiled function."""

    def __init__(self, stream=None):
        self.stream = stream
        self.count = 0  # functions compiled in this process
        self.announced = False
        self._stack: list[tuple[bool, float]] = []  # per open compile: (ours, start time)

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def on_start(self, ev) -> None:
        ours = _is_ours(ev.data.get("dispatcher"))
        self._stack.append((ours, time.perf_counter()))
        if ours and not self.announced and not os.environ.get("BNNC_QUIET"):
            self.announced = True
            self._write(f"bnnc: compiling kernels for this CPU, first run only "
                        f"(cached in {_cache_dir()}) ...\n")

    def on_end(self, ev) -> None:
        if not self._stack:
            return
        ours, t0 = self._stack.pop()
        if not ours:
            return
        self.count += 1
        if os.environ.get("BNNC_QUIET"):
            return
        line = f"  [{self.count}] {_describe(ev.data.get('dispatcher'))} ({time.perf_counter() - t0:.1f} s)"
        if self._tty():
            self._write("\r\033[K" + line + ("\n" if not self._stack else ""))
        else:
            self._write(line + "\n")

    def _tty(self) -> bool:
        try:
            return self._out().isatty()
        except (AttributeError, ValueError):
            return False

    def _write(self, text: str) -> None:
        try:
            out = self._out()
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # a closed or broken stderr must never stop a compile
            pass


_report: CompileReport | None = None


def install() -> CompileReport:
    """Register the process-wide report (once; later calls return the same one)."""
    global _report
    if _report is None:
        _report = CompileReport()
        event.register("numba:compile", _report)
    return _report
