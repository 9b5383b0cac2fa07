"""A second process compiles a plan's kernels while the first compiles the plan function.

On an empty kernel cache the first run of a model compiles every kernel its plan calls, one
after another, and then the plan function around them (runtime/codegen.py). The kernels do not
depend on one another, so on a machine of several cores a helper process compiles them too,
from the plan's last step backwards: it takes the steps as functions of their own
(``program.Steps``), types each one on the workspace's arrays and the inputs' dtypes (Numba's
type inference compiles every kernel a step calls, and its cache writes each one to disk), and
never runs or lowers them. The first process, going forwards, loads from the cache the kernels
the helper has finished. They meet in the middle.

The helper starts only when the plan function's compile has begun (so not when the plan is
cached) and is stopped as soon as the first process has its plan. Whatever the helper does or
fails at, the first process compiles everything it needs itself: the helper can only save time.
Set ``BNNC_PREFETCH=0`` to never start one.

    python -m runtime.prefetch ARTIFACT THREADS   # the helper (started by the runtime)
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

import numba
import numpy as np
from numba.core import event

MIN_MEMORY = 2 << 30  # below this much RAM (a small board), one compiler at a time
_PYTHON = re.compile(r"^(python|pypy)[\d.]*(\.exe)?$", re.IGNORECASE)
_started: set[int] = set()  # plan functions a helper was started for, in this process
_stopping: list[subprocess.Popen] = []  # helpers asked to stop, waited for at exit
_lock = threading.Lock()


class _Stopped(Exception):
    """Raised in the helper by SIGTERM: an Exception, so that Numba's cache removes a file it
    was writing (it cleans up after an Exception, not after SystemExit)."""


class _Starter(event.Listener):
    """Starts the helper when ``dispatcher`` (a plan function) begins to compile."""

    def __init__(self, dispatcher, path: str, threads: int):
        self.dispatcher, self.path, self.threads = dispatcher, path, threads
        self.proc: subprocess.Popen | None = None

    def on_start(self, ev) -> None:
        if ev.data.get("dispatcher") is not self.dispatcher:
            return
        with _lock:
            if id(self.dispatcher) in _started:
                return
            _started.add(id(self.dispatcher))
        self.proc = _spawn(self.path, self.threads)

    def on_end(self, ev) -> None:
        pass

    def stop(self) -> None:
        """Ask the helper to stop (it does when its current LLVM call returns) without waiting:
        it is reaped at exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            _stopping.append(self.proc)


def _reap() -> None:
    for proc in _stopping:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(_reap)


def _spawn(path: str, threads: int) -> subprocess.Popen | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding runtime/
    env = dict(os.environ, BNNC_QUIET="1", BNNC_PREFETCH="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    if numba.config.CACHE_DIR:
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    try:
        return subprocess.Popen([sys.executable, "-m", "runtime.prefetch", path, str(threads)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # no interpreter to start (an embedded Python): compile alone
        return None


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def wanted(dispatcher) -> bool:
    """True when a helper may be worth starting for ``dispatcher``'s first compile: a second
    core, the memory for a second compiler (a few hundred MB), and an interpreter we can start
    (``sys.executable`` is a Python, not the program that embeds one)."""
    return (os.environ.get("BNNC_PREFETCH", "1") != "0" and (os.cpu_count() or 1) > 1
            and _memory_bytes() >= MIN_MEMORY and _PYTHON.match(os.path.basename(sys.executable or ""))
            is not None and not dispatcher.signatures and id(dispatcher) not in _started)


@contextmanager
def alongside(dispatcher, path: str, threads: int):
    """Within the block, a compile of ``dispatcher`` starts a helper process for ``path`` (a
    session with ``threads``); it is stopped when the block ends."""
    if not wanted(dispatcher):
        yield
        return
    starter = _Starter(dispatcher, path, threads)
    event.register("numba:compile", starter)
    try:
        yield
    finally:
        event.unregister("numba:compile", starter)
        starter.stop()


def compile_backwards(path: str, threads: int) -> int:
    """Type every step of ``path``'s plan, last step first (compiling the kernels it calls);
    returns how many steps were typed. A step that reads a value an earlier step's code made (a
    view, not a buffer) waits until that step is typed, which gives the value's type."""
    from numba.core import compiler, typed_passes
    from numba.core.registry import cpu_target

    from runtime.program import Steps, named_values
    from runtime.session import InferenceSession

    session = InferenceSession(path, threads=threads)
    plan = session._plan
    if plan is None:
        return 0
    steps = Steps(plan)
    ws = session._idle[0]
    feeds = [np.zeros(shape, dtype) for _, shape, dtype in session._feeds.specs]
    known = {n: numba.typeof(a) for n, a in named_values(plan, feeds, ws.slots, ws.plan_scratch).items()}
    cpu_target.typing_context.refresh()
    cpu_target.target_context.refresh()
    waiting = list(reversed(steps.calls))
    typed = 0
    while waiting:
        ready = [c for c in waiting if all(p in known for p in c[1])]
        if not ready:
            break
        fn, params, outs = ready[0]
        waiting.remove(ready[0])
        res = typed_passes.type_inference_stage(cpu_target.typing_context, cpu_target.target_context,
                                                compiler.run_frontend(fn.py_func), tuple(known[p] for p in params), None)
        known.update(zip([o for o in outs if o], res.return_type))
        typed += 1
    return typed


def _stop(signum, frame):
    raise _Stopped()


def main(argv: list[str] | None = None) -> int:
    """The helper: exit code 0 whatever happens (the first process compiles what it needs)."""
    signal.signal(signal.SIGTERM, _stop)
    path, threads = (argv if argv is not None else sys.argv[1:])[:2]
    from runtime.threads import limit_threads

    try:
        with limit_threads(int(threads)):
            compile_backwards(path, int(threads))
    except Exception:  # a stop, or anything the first process will meet (and report) itself
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
