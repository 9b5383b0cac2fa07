"""Dense products with constant weights on register tiles: ``y = act([a, 1] @ [b; c])``.

The float convolution's tile (runtime/kernels/conv_tile.py, ``_make_tile``) turned around, as a
1x1 conv: the tile's "output channels" are rows of a (packed per block of rows, tap-major, with
a column of ones), its "positions" columns of y, its "image" the constant b with the bias c as
one more row, cut into panels of the tile's columns, each (k + 1) x nr contiguous (read in
order, as the prefetcher likes: a column run of a row-major b would step a page per row).

A product of few rows (a batch of 2..8) is bound by its multiply-adds once b sits in cache,
and by reading b when it does not, so it wants every row in one tile, no padded rows, and one
pass over b. ``SHAPES[r]`` is the tile of r rows and as many vectors of columns as the host's
registers hold: r * v accumulators, no more than the host's full tile (MR * V), and
r * v + v + 1 <= ``REGISTERS`` (the accumulators, the loaded vectors of b, a broadcast row
value); past that LLVM spills the accumulators to the stack on every step of k (AVX2: 2 rows x
6 vectors ran at 0.55x the speed of 2 x 4; 3 x 4 at 0.45x of 3 x 3). On AVX2 that is 1 x 6,
2 x 5, 3 x 3, 4 x 3, 5 x 2, 6 x 2 (7 and 8 rows would get one vector: 8 x 1 ran at half the
speed of two passes of 4 x 3); on AVX-512 r x 4 up to 4 rows, 5 x 3, then r x 2 up to 8 rows
(the 8 x 2 of its full tile); on NEON r x 6 up to 4 rows, 5 x 4, 6 x 4, 7 x 3, 8 x 3. A product
of n rows takes one block of ``SHAPES[n]`` when that has two vectors or more (``blocks_of``),
else blocks of the full tile (MR x V) and the rest of the rows on ``SHAPES[rest]`` if that has
the same columns, or padded into one more full tile.

Measured on the AVX2 host (1 thread, the kernel alone in a loop, us; before, 2 rows ran on
2 x 6 and more rows on blocks of 4 x 3, the last one padded): 512 -> 1000 at 2 rows 59 -> 34,
3 rows 51 -> 42; 256 -> 256 at 5 rows 15 -> 9, 6 rows 17.5 -> 10.8: 5.3 to 5.5 vector FMAs a
nanosecond from 3 rows up, near the two a cycle of the FMA units (benchmarks/bench_float_conv.py
gives the layer against onnxruntime).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels import conv_tile as ct
from runtime.kernels.base import Twin
from runtime.kernels.nn import act_rows

REGISTERS = 16 if ct.LANES == 8 else 32  # vector registers: 16 ymm (AVX2); 32 zmm (AVX-512), 32 NEON
MAX_ROWS = 8  # products of up to this many rows may run as one block of rows


def _vectors(rows: int) -> int:
    """Vectors of columns of the tile of ``rows`` rows (module docstring)."""
    return max(1, min(2 * ct.V, ct.MR * ct.V // rows, (REGISTERS - 1) // (rows + 1)))


SHAPES = {r: _vectors(r) for r in range(1, MAX_ROWS + 1)}  # rows -> vectors
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8 = (ct._make_tile(r, SHAPES[r]) for r in range(1, MAX_ROWS + 1))
assert SHAPES[ct.MR] == ct.V  # the full tile is a shape of the table: blocks of MR rows use it


def blocks_of(n: int) -> tuple[np.ndarray, int]:
    """(blocks, vectors): the blocks of rows of an n-row product, one (first row, tile rows,
    valid rows) each, and the vectors of columns of their tiles (module docstring)."""
    if n <= MAX_ROWS and SHAPES[n] >= 2:
        return np.array([[0, n, n]], np.int64), SHAPES[n]
    full, rest = divmod(n, ct.MR)
    rows = [(i * ct.MR, ct.MR, ct.MR) for i in range(full)]
    if rest and SHAPES[rest] == ct.V:
        rows.append((full * ct.MR, rest, rest))
    elif rest:
        rows.append((full * ct.MR, ct.MR, rest))
    return np.array(rows, np.int64), ct.V


@njit(inline="always")
def _tile(mr, b, xpos, pos, offs, ap, bw, yf, by, m, zero, valid, relu):
    """The tile of ``mr`` rows (``SHAPES``) at columns pos.. of y (rows of m floats); inlined
    (Numba IR) into its caller, so the chain of tiles costs no call per tile."""
    if mr == 1:
        _T1(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 2:
        _T2(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 3:
        _T3(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 4:
        _T4(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 5:
        _T5(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 6:
        _T6(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    elif mr == 7:
        _T7(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)
    else:
        _T8(b, xpos, pos, offs, ap, bw, yf, by, m, 0, pos, m, m, m, m, zero, 0, valid, relu)


@njit(cache=True, nogil=True)
def _pack_rows(a, ap, blocks):
    """ap: the rows of a per block, tap-major (ap[r0 * (k + 1) + kk * mr + r] = a[r0 + r, kk]),
    then a tap of ones; the padded rows of a block zero. Written through a strided view per row
    (0.8 us for 6 rows of 256 where indexing ap took 1.4: no sign check on every index)."""
    k = a.shape[1]
    k1 = k + 1
    for i in range(blocks.shape[0]):
        r0, mr, valid = blocks[i, 0], blocks[i, 1], blocks[i, 2]
        base = r0 * k1
        for r in range(mr):
            dst = ap[base + r:base + r + k1 * mr:mr]
            if r < valid:
                src = a[r0 + r]
                for kk in range(k):
                    dst[kk] = src[kk]
                dst[k] = 1.0
            else:
                for kk in range(k1):
                    dst[kk] = 0.0


@njit(cache=True, nogil=True)
def _columns(b, offs, ap, yf, zero, blocks, lo, hi, nr, m, kind, a0, a1):
    """Columns lo..hi of y (lo a multiple of nr), block of rows by block, then the activation.
    (Blocks in the outer loop: with the columns outside, the tiles' loop kept less in registers,
    1 us more over the 42 panels of a 4-row 128 -> 1000 product, 13 us; products of several
    blocks ran as fast either way.)"""
    k1 = offs.shape[0]
    relu = kind == 1
    for i in range(blocks.shape[0]):
        r0, mr, valid = blocks[i, 0], blocks[i, 1], blocks[i, 2]
        for pos in range(lo, hi, nr):
            _tile(mr, b, pos * k1, pos, offs, ap, r0 * k1, yf, r0 * m, m, zero, valid, relu)
    if kind > 1 and hi > lo:
        for r in range(yf.shape[0] // m):
            act_rows(yf[r * m + lo:r * m + hi], yf[r * m + lo:r * m + hi], kind, a0, a1)


def _dense_tiles_body(a, ap, b, offs, y, zero, blocks, nr, tasks, kind, a0, a1):
    """y (n, m) = act([a, 1] @ b) with b the (k + 1) x m matrix [w; bias] cut into panels of nr
    columns, each panel (k + 1) x nr contiguous, offs[kk] = kk * nr; ap the packed a
    (``_pack_rows``), ``blocks`` from ``blocks_of``; ``tasks`` runs of columns."""
    n = a.shape[0]
    m = y.shape[1]
    _pack_rows(a, ap, blocks)
    yf = y.reshape(n * m)
    per = -(-m // (tasks * nr)) * nr
    for t in prange(tasks):
        _columns(b, offs, ap, yf, zero, blocks, t * per, min(m, (t + 1) * per), nr, m, kind, a0, a1)


dense_tiles = Twin(_dense_tiles_body)


class DenseTiles:
    """The constants of one product on the tiles: b and the bias row cut into panels, the
    blocks of rows, the size of the packed rows of a."""

    def __init__(self, b: np.ndarray, c: np.ndarray | None, n: int):
        k, m = b.shape
        self.blocks, vectors = blocks_of(n)
        self.nr = nr = vectors * ct.LANES
        panels = -(-m // nr)
        wb = np.zeros((k + 1, panels * nr), np.float32)
        wb[:k, :m] = b
        if c is not None:
            wb[k, :m] = c
        self.b = np.ascontiguousarray(wb.reshape(k + 1, panels, nr).transpose(1, 0, 2)).reshape(-1)
        self.offs = np.arange(k + 1, dtype=np.int64) * nr
        last = self.blocks[-1]
        self.ap_shape = (int(last[0] + last[1]) * (k + 1),)
        self.zero = np.zeros(max(MAX_ROWS, ct.MR), np.float32)
