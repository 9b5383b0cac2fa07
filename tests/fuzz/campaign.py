"""The big fuzz campaign (`make fuzz`): many mutants, each in a worker process that has an address
space limit, watched by a parent that enforces a time limit per input.

    python -m tests.fuzz.campaign [--artifacts N] [--onnx M] [--start S] [--timeout SEC] [--mem-gib G]
    python -m tests.fuzz.campaign --reproduce artifacts:1234     # rerun one case, full traceback

Case number i of a target is always the same mutant (tests/fuzz/source.RandomSource(i)). A worker
runs cases in order and prints one line per case; an exception other than BnncError is a bug, a
worker that dies (a crash, a MemoryError past the limit) or prints nothing for --timeout seconds
marks its current case as a crash or a hang, and a new worker carries on after it. Exit code 1 when
anything but "refused"/"ran"/"loaded" happened.
"""

from __future__ import annotations

import argparse
import collections
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from tests.fuzz.source import RandomSource

TARGETS = ("artifacts", "onnx")


def _target(name: str, directory: str):
    """(seeds, mutate, oracle, suffix) of a target."""
    if name == "artifacts":
        from tests.fuzz import artifacts as m

        return m.seed_artifacts(directory), m.mutate, m.load_and_run, ".bnn"
    from tests.fuzz import onnx_models as m

    return m.seed_models(), m.mutate, m.load, ".onnx"


def _case(target, i: int, directory: str):
    seeds, mutate, oracle, suffix = target
    src = RandomSource(i)
    names, raw = mutate(src, seeds[src.integer(0, len(seeds) - 1)])
    path = os.path.join(directory, "case" + suffix)
    with open(path, "wb") as f:
        f.write(raw)
    return names, lambda: oracle(path)


def worker(name: str, start: int, stop: int, mem_gib: float) -> None:
    """Run cases [start, stop) of one target, one output line each."""
    import warnings

    warnings.simplefilter("ignore")  # forged weights overflow float kernels: expected, not news
    with tempfile.TemporaryDirectory() as d:
        target = _target(name, d)
        _warm_up(target, d)
        limit = int(mem_gib * 2**30) + _address_space()
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for i in range(start, stop):
            names, run = _case(target, i, d)
            try:
                outcome = run()
            except Exception as e:  # noqa: BLE001 -- the point: anything but BnncError is a bug
                tb = traceback.extract_tb(e.__traceback__)[-1]
                where = f"{os.path.relpath(tb.filename)}:{tb.lineno}"
                outcome = f"bug {type(e).__name__} at {where}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            print(f"{i}\t{names}\t{outcome}", flush=True)


def _warm_up(target, directory: str) -> None:
    """Run every seed once before the timed cases: compiling a seed's plan function (up to half
    a minute for the larger models) is start-up work, not the time one input takes."""
    seeds, _, oracle, suffix = target
    for k, raw in enumerate(seeds):
        path = os.path.join(directory, f"seed{k}{suffix}")
        with open(path, "wb") as f:
            f.write(raw)
        if oracle(path) not in ("ran", "loaded"):  # a refused seed would make every mutant "refused"
            raise RuntimeError(f"seed {k} of the campaign does not run")


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _pump(stream, lines: queue.Queue) -> None:
    """Hand the worker's lines to the parent, then "" at its end (a thread, so the parent can wait
    on the queue with a timeout)."""
    for line in stream:
        lines.put(line)
    lines.put("")


def run(name: str, start: int, count: int, timeout: float, mem_gib: float) -> collections.Counter:
    """Drive workers over cases [start, start + count) of ``name``; return outcome counts."""
    counts: collections.Counter = collections.Counter()
    bugs: dict[str, list[int]] = {}
    i, stop, t0 = start, start + count, time.time()
    while i < stop:
        cmd = [sys.executable, "-m", "tests.fuzz.campaign", "--worker", name, str(i), str(stop), str(mem_gib)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(p.stdout, lines), daemon=True).start()
        wait = 1200.0  # the first case comes after compiling the seeds and their plan functions
        while True:
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                p.kill()
                p.wait()
                bugs.setdefault("hang (no answer within the time limit)", []).append(i)
                counts["hang"] += 1
                i += 1
                break
            if not line:
                code = p.wait()
                if i < stop:  # died in the middle of case i
                    bugs.setdefault(f"worker died with exit code {code}", []).append(i)
                    counts["crash"] += 1
                    i += 1
                break
            case, _, outcome = line.rstrip("\n").split("\t", 2)
            i, wait = int(case) + 1, timeout
            counts[outcome.split(":")[0]] += 1
            if outcome.startswith("bug"):
                bugs.setdefault(outcome, []).append(int(case))
            if (i - start) % 10_000 == 0:
                print(f"  {name}: {i - start:,} cases, {time.time() - t0:.0f} s, {dict(counts)}", flush=True)
        p.stdout.close()
    print(f"{name}: {count:,} cases in {time.time() - t0:.0f} s: {dict(counts)}")
    for what, cases in bugs.items():
        print(f"  {len(cases)} x {what}  (cases {', '.join(map(str, cases[:5]))}{', ...' if len(cases) > 5 else ''})")
    return counts


def reproduce(spec: str) -> None:
    name, _, i = spec.partition(":")
    with tempfile.TemporaryDirectory() as d:
        names, run_case = _case(_target(name, d), int(i), d)
        print(f"{spec}: mutations {names}")
        print(run_case())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=int, default=100_000, help="artifact mutants")
    ap.add_argument("--onnx", type=int, default=20_000, help="ONNX model mutants")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds allowed per input")
    ap.add_argument("--mem-gib", type=float, default=12.0,
                    help="address space a worker may add to what it holds after start-up (runtime.validate "
                         "lets a session plan at most 8 GiB of values)")
    ap.add_argument("--reproduce", metavar="TARGET:CASE")
    args = ap.parse_args()
    if args.reproduce:
        reproduce(args.reproduce)
        return 0
    bad = 0
    for name, count in (("artifacts", args.artifacts), ("onnx", args.onnx)):
        if count:
            counts = run(name, args.start, count, args.timeout, args.mem_gib)
            bad += sum(v for k, v in counts.items() if k not in ("refused", "ran", "loaded"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
