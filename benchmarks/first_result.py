"""Benchmark: how long a new process takes to its first result, with a warm and an empty cache.

A model is compiled once to an artifact. Then, each time in a fresh Python process, we time
from the process's start (``python -c``, interpreter start-up included) to the first output of
``InferenceSession(artifact).run`` on a random input: ``--runs`` times with the kernel cache
warm (the second and later processes load the compiled plan from disk) and ``--runs`` times
with an empty cache (``XDG_CACHE_HOME`` pointing at a new empty folder, so every kernel and the
plan compile). Medians printed, with the process's thread count.

    python benchmarks/first_result.py [MODEL.onnx | --workload birealnet18_224] [--threads 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import onnx

import bnnc
from bnnc.workloads import WORKLOADS

CHILD = """
import sys, numpy as np
from runtime import InferenceSession
sess = InferenceSession(sys.argv[1], threads=int(sys.argv[2]))
x = sess.get_inputs()[0]
sess.run(None, {x.name: np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)})
"""


def timed_process(artifact: str, threads: int, cache_home: str) -> float:
    env = dict(os.environ, XDG_CACHE_HOME=cache_home, BNNC_QUIET="1")
    env.pop("NUMBA_CACHE_DIR", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, artifact, str(threads)], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--workload", default="birealnet18_224", choices=sorted(WORKLOADS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src = args.model
        if src is None:
            src = os.path.join(d, args.workload + ".onnx")
            onnx.save(WORKLOADS[args.workload](), src)
        artifact = os.path.join(d, "model.bnn")
        bnnc.compile(src, artifact)
        cold = []
        for i in range(args.runs):
            cold.append(timed_process(artifact, args.threads, tempfile.mkdtemp(dir=d, prefix=f"cold{i}-")))
        warm_home = tempfile.mkdtemp(dir=d, prefix="warm-")
        timed_process(artifact, args.threads, warm_home)  # fills the cache
        warm = [timed_process(artifact, args.threads, warm_home) for _ in range(args.runs)]
    name = os.path.basename(src) if args.model else args.workload
    print(f"{name}, {args.threads} thread(s), first result of a new process, medians of {args.runs}:")
    print(f"  warm cache  {statistics.median(warm):6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in warm)})")
    print(f"  empty cache {statistics.median(cold):6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in cold)})")


if __name__ == "__main__":
    main()
