"""The bare XOR-popcount tile: the machine's rate for a binary layer of a given shape.

A binary layer of P output pixels, K input bits per output (cin/groups x kh x kw, or the input
features of a dense layer) and C output channels needs P x C dot products of W = ceil(K / 64)
words each: ``dot = K - 2 * popcount(a xor w)`` (the bit convention of ``runtime/bitpack.py``).
The tile does exactly that many XOR + popcount + add steps and nothing else: no padding, no
im2col, no threshold, no packing of an output. Its data stay in cache: W words of 64
activation rows are reused round robin for the P pixels, and the layer's real-sized weights are
laid out [W, C] so that the innermost loop runs over channels, contiguous, which LLVM
vectorises (``vpopcntq`` on AVX-512 VPOPCNTDQ, ``popcnt`` otherwise, ``cnt`` on AArch64). A
layer with few channels makes a short vector that way; ``pixels_inner`` runs the same steps
with the 64 pixels of the working set innermost instead.
Ternary layers AND a second weight bitplane in before the popcount. With several threads the
pixels are split into blocks run by ``prange``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from runtime.bitpack import popcount

ROWS = 64  # activation rows in the working set
BLOCKS_PER_THREAD = 4
MIN_STEPS = 200_000  # a tiny layer's tile is repeated inside one call up to this many word steps,
# so that the microsecond of calling into Numba does not count as its work


@njit(cache=True)
def _rows(a, w, m, p0, p1, acc) -> int:
    """Dot-product counts of pixels p0..p1 against every channel, the sum of them returned (so
    that no work can be optimised away)."""
    total = 0
    for p in range(p0, p1):
        x = a[p % a.shape[0]]
        for c in range(acc.shape[0]):
            acc[c] = 0
        for k in range(w.shape[0]):
            xk = x[k]
            if m.shape[0]:
                for c in range(w.shape[1]):
                    acc[c] += popcount((xk ^ w[k, c]) & m[k, c])
            else:
                for c in range(w.shape[1]):
                    acc[c] += popcount(xk ^ w[k, c])
        for c in range(acc.shape[0]):
            total += acc[c]
    return total


@njit(cache=True)
def _columns(at, wc, m, p0, p1, acc) -> int:
    """The same counts with the pixels innermost: ``at`` is [W, ROWS], ``wc`` [C, W] (for layers
    with few channels, where a vector over channels would be short)."""
    total = 0
    rows = at.shape[1]
    for q in range(p0, p1, rows):
        n = min(rows, p1 - q)
        for c in range(wc.shape[0]):
            for j in range(n):
                acc[j] = 0
            for k in range(wc.shape[1]):
                wk = wc[c, k]
                if m.shape[0]:
                    mk = m[k, c]
                    for j in range(n):
                        acc[j] += popcount((at[k, j] ^ wk) & mk)
                else:
                    for j in range(n):
                        acc[j] += popcount(at[k, j] ^ wk)
            for j in range(n):
                total += acc[j]
    return total


@njit(cache=True)
def _step(a, w, m, p0, p1, acc, pixels_inner) -> int:
    if pixels_inner:
        return _columns(a, w, m, p0, p1, acc)
    return _rows(a, w, m, p0, p1, acc)


@njit(cache=True)
def _tile(a, w, m, pixels, acc, reps, pixels_inner) -> int:
    total = 0
    for _ in range(reps):
        total += _step(a, w, m, 0, pixels, acc[0], pixels_inner)
    return total


@njit(cache=True, parallel=True)
def _tile_parallel(a, w, m, pixels, acc, reps, pixels_inner) -> int:
    blocks = acc.shape[0]
    total = 0
    for _ in range(reps):
        for b in prange(blocks):
            total += _step(a, w, m, b * pixels // blocks, (b + 1) * pixels // blocks, acc[b], pixels_inner)
    return total


class Tile:
    """The tile of one layer shape, with its data made once; ``run()`` does ``reps`` times
    P x C x W steps (``reps`` > 1 only for layers under ``MIN_STEPS``: divide its time by it)."""

    def __init__(self, pixels: int, bits: int, channels: int, ternary: bool = False, threads: int = 1,
                 pixels_inner: bool = False, seed: int = 0):
        rng = np.random.default_rng(seed)
        words = (bits + 63) // 64
        draw = lambda *shape: rng.integers(0, 2**64, shape, dtype=np.uint64)  # noqa: E731
        self.pixels, self.bits, self.channels, self.words, self.threads = pixels, bits, channels, words, threads
        self.pixels_inner = pixels_inner
        self.a = draw(words, ROWS) if pixels_inner else draw(ROWS, words)
        self.w = draw(channels, words) if pixels_inner else draw(words, channels)
        self.m = draw(words, channels) if ternary else np.zeros((0, 0), np.uint64)
        blocks = 1 if threads == 1 else min(pixels, threads * BLOCKS_PER_THREAD)
        self.acc = np.zeros((blocks, ROWS if pixels_inner else channels), np.int64)
        self.reps = max(1, MIN_STEPS // (pixels * channels * words))

    @property
    def macs(self) -> int:
        """Binary multiply-accumulates of the layer (bits, not words)."""
        return self.pixels * self.channels * self.bits

    def run(self) -> int:
        if self.acc.shape[0] == 1:
            return _tile(self.a, self.w, self.m, self.pixels, self.acc, self.reps, self.pixels_inner)
        numba.set_num_threads(self.threads)
        return _tile_parallel(self.a, self.w, self.m, self.pixels, self.acc, self.reps, self.pixels_inner)
