"""Compile and cache every kernel of a model ahead of time: ``python -m runtime.warmup MODEL.bnn``.

The first run of a model on a machine compiles its kernels for that CPU (runtime/progress.py
reports it); run this once after installing, e.g. at image build or boot, and the application's
first inference is as fast as every later one. It loads a session and runs it on zeros of every
input's shape and dtype, which takes every kernel of the plan through its compile, with the
thread count given (the application's), or else with one thread and with all cores; the cache
(runtime/jitcache.py) keeps the machine code for later processes.

Exit code 0 on success, 2 with ``error: ...`` on a bad artifact.
"""

from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

from runtime import BnncError, InferenceSession


def zero_feeds(sess: InferenceSession) -> dict[str, np.ndarray]:
    """Zeros for every input, a dynamic batch dimension taken as 1."""
    feeds = {}
    for arg in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        dtype = arg.type.removeprefix("tensor(").removesuffix(")")
        feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds


def warm_up(path: str, threads: int | None = None) -> float:
    """Load ``path`` and run it on zeros; return the seconds it took (compiles included).

    With ``threads=None`` it runs once with one thread and once with all cores, because the
    runtime may take a serial path for one thread and a parallel one for more: both get compiled.
    """
    t0 = time.perf_counter()
    counts = [threads] if threads is not None else sorted({1, numba.config.NUMBA_NUM_THREADS})
    for n in counts:
        sess = InferenceSession(path, threads=n)
        sess.run(None, zero_feeds(sess))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runtime.warmup", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .bnn artifact")
    ap.add_argument("--threads", type=int, default=None, help="threads for the kernels [default: all cores]")
    args = ap.parse_args(argv)
    try:
        seconds = warm_up(args.model, args.threads)
    except BnncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model}: kernels ready ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
