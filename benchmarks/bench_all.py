"""`make bench`: every reference workload and every example and corpus model, at 1 and 2 threads.

    python benchmarks/bench_all.py [--threads 1 2] [--repeat 30] [--only TEXT]
                                   [--out benchmarks/results.md] [--json FILE]

The reference workloads (``bnnc.workloads``: Bi-Real Net 18 and a QuickNet-like net at 224x224
with 1000 classes, CNV, the BNN MLP 784-1024x3-10) are built into a temporary folder; then each
of them, every ``models/*.onnx`` and every ``../shared/corpus/*/model.onnx`` is measured with
``floor.py``'s method (bnnc, onnxruntime, the float part and a bare XOR-popcount tile per binary
layer, interleaved in one run, medians), plus each engine's peak memory at one thread
(``bnnc.memory``). One markdown table, headed by the CPU's name and its popcount instruction
set, is printed and written to ``--out``; ``--json`` also writes every row with its per-layer
figures. ``--only`` keeps the models whose label contains the text.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time

import onnx

from bnnc import workloads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import measure_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu() -> str:
    """The CPU's name, core count and the widest popcount it has (from /proc/cpuinfo)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name") or info.get("CPU part") or platform.machine()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if "avx512_vpopcntdq" in flags:
        pop = "AVX-512 VPOPCNTDQ"
    elif "avx2" in flags:
        pop = "AVX2 + POPCNT" if "popcnt" in flags else "AVX2"
    elif "popcnt" in flags:
        pop = "POPCNT"
    elif "asimd" in flags:
        pop = "NEON (asimd CNT)"
    else:
        pop = "no popcount instruction listed"
    return f"{name}, {os.cpu_count()} cores, popcount: {pop}"


def models(workload_dir: str) -> list[tuple[str, str]]:
    """(label, path) of every model to measure: workloads, models/, the shared corpus."""
    found = []
    for name, build in workloads.WORKLOADS.items():
        path = os.path.join(workload_dir, name + ".onnx")
        onnx.save(build(), path)
        found.append((f"workload {name}", path))
    found += [(f"models/{os.path.basename(p)}", p) for p in sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))]
    corpus = os.path.join(ROOT, "..", "shared", "corpus")
    found += [(f"corpus {os.path.basename(os.path.dirname(p))}", p)
              for p in sorted(glob.glob(os.path.join(corpus, "*", "model.onnx")))]
    return found


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | batch | binary MACs | threads | onnxruntime ms | bnnc ms | ratio | floor ms | efficiency | peak MB onnxruntime / bnnc |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | | | {r['threads']} | | | | | | error: {r['error']} |")
            continue
        m = r.get("memory", {})
        mem = (f"{m['onnxruntime']['peak_mb']:.0f} / {m['bnnc']['peak_mb']:.0f}"
               if "onnxruntime" in m and "peak_mb" in m["onnxruntime"] and "peak_mb" in m["bnnc"] else "")
        batch = next(iter(r["inputs"].values()), [1])[0] if r["inputs"] else 1
        lines.append(f"| {r['label']} | {batch} | {r['binary_mac_fraction']:.0%} | {r['threads']} | {r['onnxruntime_ms']:.3f} | "
                     f"{r['bnnc_ms']:.3f} | {r['speedup']:.2f}x | {r['floor_ms']:.3f} | {r['efficiency']:.2f} | {mem} |")
    lines += ["", "ratio = onnxruntime ms / bnnc ms; efficiency = floor ms / bnnc ms (floor: benchmarks/floor.py);",
              "medians of interleaved runs in one process per model. Peak MB:",
              "resident memory above the engine's import, steady state, one thread, a fresh process per engine."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--only", default="", help="measure only the models whose label contains this text")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results.md"))
    ap.add_argument("--json", help="also write every row, per-layer figures included, to this file")
    args = ap.parse_args()
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, path in models(d):
            if args.only not in label:
                continue
            print(f"  {label} ...", file=sys.stderr, flush=True)
            try:
                rows += [{"label": label, **r} for r in measure_threads(path, args.threads, args.repeat, memory=True)]
            except Exception as e:  # one model that fails must not lose the others' figures
                rows += [{"label": label, "threads": n, "error": str(e).splitlines()[0][:120]} for n in args.threads]
    header = (f"bnnc against onnxruntime and the floor: {cpu()}; {args.repeat} runs of each, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s")
    text = table(rows, header)
    print(text)
    _write(args.out, text + "\n")
    if args.json:
        _write(args.json, json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    print(f"\n(written to {os.path.relpath(args.out)})", file=sys.stderr)


def _write(path: str, text: str) -> None:
    """Write whole or not at all (a temporary file renamed over the target)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
