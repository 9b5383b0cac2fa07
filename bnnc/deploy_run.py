"""Run a bnnc model on this machine: the example script of a ``bnnc deploy`` folder (as run.py).

    python run.py                          # the folder's model on a random input
    python run.py --input x.npy            # on an input array (NAME=x.npy when there are several)
    python run.py --threads 4 --repeat 50  # latency over 50 runs with 4 threads
    python run.py --warmup                 # only compile and cache the kernels, then exit
    python run.py --save out.npz           # also write the outputs, keyed by output name

Needs numpy and numba only, and the ``runtime`` folder beside this file. The first run on a
machine compiles the kernels for its CPU (it says so on stderr); later runs load them from the
cache. Prints every output's shape and first values, the top classes of a classifier's output
(an [N, classes] float output) and the latency. Exit code 2 with ``error: ...`` on a bad input.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

from runtime import BnncError, InferenceSession, progress
from runtime.warmup import warm_up, zero_feeds

HERE = os.path.dirname(os.path.abspath(__file__))


def default_model() -> str:
    found = sorted(glob.glob(os.path.join(HERE, "*.bnn")))
    if len(found) != 1:
        raise BnncError(f"expected one .bnn file beside run.py, found {len(found)}; name the model")
    return found[0]


def read_feeds(sess: InferenceSession, specs: list[str], seed: int) -> dict[str, np.ndarray]:
    """Arrays from NAME=FILE.npy specs (NAME may be left out with one input); random normal
    values for the inputs not given."""
    names = [i.name for i in sess.get_inputs()]
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(names) != 1:
                raise BnncError(f"the model has {len(names)} inputs ({', '.join(names)}); use --input NAME=FILE.npy")
            name, path = names[0], spec
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BnncError(f"cannot read '{path}' as a .npy array ({e})") from None
    rng = np.random.default_rng(seed)
    for name, zeros in zero_feeds(sess).items():
        if name not in feeds:
            feeds[name] = rng.standard_normal(zeros.shape).astype(zeros.dtype)
    return feeds


def show(names: list[str], outputs: list[np.ndarray], top: int) -> None:
    with np.printoptions(precision=5, suppress=True, threshold=10, edgeitems=5):
        for name, out in zip(names, outputs):
            print(f"{name}: shape {list(out.shape)} {out.dtype}")
            print(f"  first values: {out.reshape(-1)[:10]}")
            if out.ndim == 2 and out.shape[1] > 1 and out.dtype.kind == "f" and top > 0:
                for i, row in enumerate(out[:8]):
                    best = np.argsort(-row, kind="stable")[:top]
                    print(f"  sample {i}: top classes " + ", ".join(f"{c} ({row[c]:.4g})" for c in best))


def time_runs(sess: InferenceSession, feeds: dict[str, np.ndarray], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return times


def save(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file, so a failure leaves no half file."""
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run a bnnc model (numpy + numba only).")
    ap.add_argument("model", nargs="?", help="the .bnn artifact [default: the one beside run.py]")
    ap.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE.npy")
    ap.add_argument("--threads", type=int, default=None, help="threads for the kernels [default: all cores]")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs after the first [default: 20]")
    ap.add_argument("--top", type=int, default=3, help="classes to list per sample [default: 3]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input")
    ap.add_argument("--save", metavar="OUT.npz", help="write the outputs to OUT.npz")
    ap.add_argument("--warmup", action="store_true", help="only compile and cache the kernels")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BnncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model()
    if args.warmup:
        print(f"{os.path.basename(model)}: kernels ready ({warm_up(model, args.threads):.1f} s)")
        return 0
    t0 = time.perf_counter()
    sess = InferenceSession(model, threads=args.threads)
    feeds = read_feeds(sess, args.input, args.seed)
    outputs = sess.run(None, feeds)
    first = time.perf_counter() - t0
    names = [o.name for o in sess.get_outputs()]
    show(names, outputs, args.top)
    if args.save:
        save(args.save, dict(zip(names, outputs)))
    compiled = progress.install().count
    print(f"first run (load{f' + compile {compiled} functions' if compiled else ''}): {first * 1e3:.1f} ms")
    if args.repeat > 0:
        ms = np.array(time_runs(sess, feeds, args.repeat)) * 1e3
        print(f"latency over {args.repeat} runs: median {np.median(ms):.3f} ms, min {ms.min():.3f} ms, "
              f"max {ms.max():.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
