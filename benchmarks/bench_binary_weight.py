"""Benchmark: bnnc.BinaryWeightConv by sign tables against the float convolution, layer by layer.

For each shape (the binary-weight convs of models/bwn.onnx and ../shared/corpus/torch_bwn_legacy,
and smaller ones around the point where the tables stop paying: few output channels, few taps,
strides, 1x1), the kernel is built from a plan step three ways: the float convolution
(runtime/kernels/conv.py), the sign tables over wide rows and over packed blocks
(runtime/kernels/binary_weight_table.py). Each is timed as the minimum CPU time of the calling
thread over ``--reps`` runs at one thread (steady on a shared machine), and we print the times,
float / table, and the estimate binary_weight.py decides by: the float conv's ``macs / LANES``
over the tables' ``binary_weight._ops`` (fitted to these figures; each time here includes the Python call of a
step, a few microseconds, which the plan function does not pay).

    python benchmarks/bench_binary_weight.py [--reps 200] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from runtime.bitpack import pack_dense
from runtime.kernels import binary_weight as bw
from runtime.kernels import binary_weight_table as table
from runtime.kernels.base import KERNELS, Step
from runtime.threads import limit_threads

# name: (N, C, H, W, M, k, stride, pad)
CASES = {
    "bwn 32->64 32x32": (1, 32, 32, 32, 64, 3, 1, 1),
    "bwn 64->64 16x16": (1, 64, 16, 16, 64, 3, 1, 1),
    "bwn 64->128 8x8": (1, 64, 8, 8, 128, 3, 1, 1),
    "legacy b8 32->64 32x32": (8, 32, 32, 32, 64, 3, 1, 1),
    "legacy b8 64->128 16x16": (8, 64, 16, 16, 128, 3, 1, 1),
    "legacy b8 128->128 8x8": (8, 128, 8, 8, 128, 3, 1, 1),
    "3->16 3x3 32x32": (1, 3, 32, 32, 16, 3, 1, 1),
    "16->8 3x3 16x16": (1, 16, 16, 16, 8, 3, 1, 1),
    "16->16 3x3 16x16": (1, 16, 16, 16, 16, 3, 1, 1),
    "32->32 3x3 8x8": (1, 32, 8, 8, 32, 3, 1, 1),
    "64->64 3x3 4x4": (1, 64, 4, 4, 64, 3, 1, 1),
    "64->128 3x3 s2 16x16": (1, 64, 16, 16, 128, 3, 2, 1),
    "64->128 1x1 16x16": (1, 64, 16, 16, 128, 1, 1, 0),
    "8->8 1x1 16x16": (1, 8, 16, 16, 8, 1, 1, 0),
    "256->256 3x3 7x7": (1, 256, 7, 7, 256, 3, 1, 1),
}


def build(case, mode: str):
    n, c, h, w, m, k, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    bits, _ = pack_dense(rng.choice(np.array([-1, 1], np.int8), size=(m, c, k, k)))
    scale, bias = rng.uniform(0.1, 1, m).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    o = (h + 2 * p - k) // s + 1
    step = Step("bench", "bnnc.BinaryWeightConv",
                dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=1, cin=c, cout=m, activation="Relu"),
                [x.shape, bits.shape, None, scale.shape, bias.shape], ["float32", "uint64", None, "float32", "float32"],
                [(n, m, o, o)], ["float32"], [None, bits, None, scale, bias])
    choose = bw.TablePlan.choose
    bw.TablePlan.choose = staticmethod(
        lambda conv, v, sc, b: None if mode == "float" else bw.TablePlan(conv, v, sc, b, mode == "packed"))
    try:
        kernel = KERNELS["bnnc.BinaryWeightConv"](step)
    finally:
        bw.TablePlan.choose = choose
    return kernel, x, np.empty((n, m, o, o), np.float32)


def cpu_min(kernel, x, y, reps: int) -> float:
    scratch = kernel.make_scratch()
    best = float("inf")
    with limit_threads(1):
        for _ in range(reps):
            c0 = time.thread_time()
            kernel.run([x], [y], scratch)
            best = min(best, time.thread_time() - c0)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    print(f"{'case':26} {'float us':>9} {'wide us':>9} {'packed us':>9} {'speedup':>8} {'est.':>6}  chosen")
    for name, case in CASES.items():
        if args.only not in name:
            continue
        times, outs = {}, {}
        for mode in ("float", "wide", "packed"):
            kernel, x, y = build(case, mode)
            kernel.run([x], [y], kernel.make_scratch())
            outs[mode] = y.copy()
            times[mode] = cpu_min(kernel, x, y, args.reps)
        assert np.allclose(outs["wide"], outs["float"], atol=1e-4) and np.allclose(outs["packed"], outs["float"], atol=1e-4)
        real = KERNELS["bnnc.BinaryWeightConv"](build(case, "float")[0].step)
        n, c, h, w, m, k, s, p = case
        fl = real.macs / table.LANES
        wq = bw.tiles.geometry(1, real.y4[2:], (k, k), (s, s), (1, 1), (p,) * 4)[1][3]
        est = fl / (min(bw._ops(real.y4, m, c * k * k, wq, pk) for pk in (False, True)))
        chosen = "float" if real.table is None else ("packed" if real.table.packed else "wide")
        best = min(times["wide"], times["packed"])
        print(f"{name:26} {times['float']:9.1f} {times['wide']:9.1f} {times['packed']:9.1f} {times['float'] / best:7.2f}x"
              f" {est:5.2f}x  {chosen}", flush=True)


if __name__ == "__main__":
    main()
