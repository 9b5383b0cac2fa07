"""Benchmark: every model of a directory of models (default ../shared/corpus), bnnc against
onnxruntime with `bnnc bench`'s method (one process, same thread count, interleaved runs after
warm-up, medians), one table row per model with the binary MAC fraction from `bnnc inspect`.

    python benchmarks/bench_corpus.py [DIR] [--threads 1] [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bnnc.bench import bench
from bnnc.report import build_report


def models(root: str) -> list[str]:
    found = []
    for dirpath, _, files in sorted(os.walk(root)):
        found += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".onnx")]
    return found


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=os.path.join(here, "..", "..", "shared", "corpus"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paths = models(args.root)
    if not paths:
        sys.exit(f"error: no .onnx files under {args.root}")
    rows = []
    for p in paths:
        name = os.path.relpath(p, args.root)
        print(f"  {name} ...", file=sys.stderr, flush=True)
        r = bench(p, threads=args.threads, repeat=args.repeat, memory=False)
        r["binary_mac_fraction"] = build_report(p)["binary_mac_fraction"]
        r["name"] = name
        rows.append(r)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.threads} thread(s), medians of {args.repeat} interleaved runs")
    print(f"{'model':<48} {'binary MACs':>11} {'onnxruntime ms':>15} {'bnnc ms':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['name']:<48} {r['binary_mac_fraction']:>10.1%} {r['onnxruntime']['median_ms']:>15.3f} "
              f"{r['bnnc']['median_ms']:>9.3f} {r['speedup']:>7.2f}x")


if __name__ == "__main__":
    main()
