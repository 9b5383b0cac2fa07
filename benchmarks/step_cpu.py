"""Benchmark: bnnc's CPU time per plan step and per inference, one thread, on a shared machine.

On a machine other work is loading, wall-clock medians move with that work. With one thread an
inference runs in the calling thread, so that thread's CPU time (``time.thread_time``) is the
work done, and its minimum over many runs is steady. We print, for an artifact or a model
(compiled in a temporary folder), every step's minimum CPU time over ``--repeat`` step-by-step
runs (the plan's emitted code one step at a time, each called from Python) and the median and
minimum CPU time of whole runs.

    python benchmarks/step_cpu.py MODEL.onnx|MODEL.bnn [--repeat 30] [--top 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from runtime import InferenceSession
from runtime.session import _Laps
from runtime.threads import limit_threads


def measure(artifact: str, repeat: int) -> tuple[list[tuple[str, str, float]], float, float]:
    """([(step, op, min CPU s)], median and min CPU s of a whole run), one thread."""
    s = InferenceSession(artifact, threads=1)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in s.get_inputs()}
    for _ in range(3):
        s.run(None, feeds)
    whole = []
    for _ in range(repeat):
        c0 = time.thread_time()
        s.run(None, feeds)
        whole.append(time.thread_time() - c0)
    arrays, _ = s._feeds.check(feeds)
    times: list[list[float]] = [[] for _ in s._steps]
    with limit_threads(1), s._workspace() as ws:
        for _ in range(repeat):
            laps = _Laps(times, time.thread_time)
            s._step_by_step(ws, arrays, laps, laps.start)
    steps = [(st["name"], st["op"], min(t)) for st, t in zip(s._steps, times)]
    return steps, float(np.median(whole)), min(whole)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--top", type=int, default=40, help="list this many steps, slowest first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        artifact = args.model
        if args.model.endswith(".onnx"):
            from bnnc.compiler import compile

            artifact = compile(args.model, os.path.join(d, "model.bnn"))
        steps, med, low = measure(artifact, args.repeat)
    print(f"{args.model}: one thread, CPU time of the calling thread, {args.repeat} runs")
    print(f"  whole run   median {med * 1e3:.3f} ms   min {low * 1e3:.3f} ms")
    print(f"  steps       sum of minimums {sum(t for *_, t in steps) * 1e3:.3f} ms")
    for name, op, t in sorted(steps, key=lambda r: -r[2])[:args.top]:
        print(f"  {name[:48]:48s} {op[:22]:22s} {t * 1e3:8.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
