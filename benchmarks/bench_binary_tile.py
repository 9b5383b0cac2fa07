"""Benchmark: the binary register tile's two ways of counting (runtime/kernels/binary_tile.py) on
this host, in words (64 binary multiply-adds) per nanosecond: 64-bit lanes (``ctpop`` over
64-bit lanes, ``vpopcntq`` on AVX-512 VPOPCNTDQ) and byte counters widened every BYTE_RUN words
(what the runtime takes where the CPU has no 64-bit vector popcount). Rows of 448 pixels
against 64 output channels, K words per output as in Bi-Real Net 18's layers (9, 18, 36, 72);
both checked to give the same counts, then timed in interleaved rounds (median and best).

    python benchmarks/bench_binary_tile.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from runtime.kernels.binary_tile import COUNT_BYTES, LANES, MR, make_xnor_tile, tile_weights

PIXELS, CHANNELS = 448, 64


def runner(count_bytes: bool):
    tile = make_xnor_tile(False, count_bytes)

    @njit
    def run(x, offs, w, acc, reps):
        kk = offs.shape[0]
        for _ in range(reps):
            for q in range(0, acc.shape[1], LANES):
                for cb in range(acc.shape[0] // MR):
                    tile(x, q, offs, 0, kk, w, cb * kk * MR, acc, cb * MR * acc.shape[1] + q, acc.shape[1])

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    ways = {"64-bit lanes": runner(False), "byte counters": runner(True)}
    print(f"host: {LANES} x 64-bit lanes, the runtime counts in {'bytes' if COUNT_BYTES else '64-bit lanes'}")
    rng = np.random.default_rng(0)
    for k in (9, 18, 36, 72):
        x = rng.integers(0, 2**63, PIXELS * k, dtype=np.int64).view(np.uint64)
        offs = np.arange(k, dtype=np.int64) * PIXELS
        w = tile_weights(rng.integers(0, 2**63, (1, k, CHANNELS), dtype=np.int64).view(np.uint64))
        accs = {name: np.zeros((CHANNELS, PIXELS), np.int64) for name in ways}
        for name, run in ways.items():
            run(x, offs, w, accs[name], 1)
        first = next(iter(accs.values()))
        assert all((a == first).all() for a in accs.values()), "the two ways count differently"
        reps = max(1, 20_000_000 // (PIXELS * CHANNELS * k))
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, run in ways.items():
                t0 = time.perf_counter()
                run(x, offs, w, accs[name], reps)
                times[name].append((time.perf_counter() - t0) / (reps * PIXELS * CHANNELS * k) * 1e9)
        row = "  ".join(f"{name} {1 / np.median(t):.2f} (best {1 / min(t):.2f})" for name, t in times.items())
        print(f"K = {k:2d} words: {row} words/ns")


if __name__ == "__main__":
    main()
