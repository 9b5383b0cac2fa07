"""Float convolution as register tiles over a packed panel: positions contiguous, nothing wasted.

The tiles of runtime/kernels/conv_tile.py read a tap as a run of NR consecutive "wide" positions
(rows of Wq = OW + KW - 1 columns): on small padded planes much of that run is columns that do
not exist in y (8x8 with a 3x3 kernel: 20% of every row, a third of the tiles' work), and runs
cannot span images. Here the output positions of the whole batch, q = n * OH * OW + oh * OW + ow,
are cut into tiles of NR; for each, a panel holds every tap's NR input values, row k at k * RS:

    panel[k * RS + j] = xq[n][offs[k] + oh * Wq + ow]      (q0 + j = (n, oh, ow))

copied from the same phase-split planes xq as the wide tiles (conv_tile.split_input), one run of
consecutive output columns at a time (``copy_rows``: vectors of 8 floats, so a run may write up to
7 floats past its end; the next run overwrites them, and RS = NR + 8 keeps the last in its row).
The same ``conv_tile.tile`` then reads the panel with offs[k] = k * RS and stores each image as
one "row" of OH * OW positions, y's rows M * OH * OW apart. Only the last tile of the batch
computes positions for nothing. The copy costs about as much as 4-6 multiply-adds per panel value,
so it pays where a tile computes many output channels for each (``cost``), and conv.py compares
that with the wide rows' waste.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.kernels.base import Twin
from runtime.kernels.conv_planes import pack_runs, split_input
from runtime.kernels.conv_tile import MR, NR, tile
from runtime.kernels.nn import act_inplace

RS = NR + 8  # floats between panel rows: a row plus the spill of an 8-float copy
_PACK_MACS = 5.0  # multiply-adds that one packed value costs (benchmarks/bench_float_conv.py)


@njit(cache=True, nogil=True)
def _pack(xq, pan, offs, q0, P, OW, Wq, Q):
    """The panel of the tile at position q0 (module docstring), run by run."""
    pack_runs(xq, pan, offs, q0, P, OW, Wq, Q, NR, RS)


def _conv_panel_body(x, xq, panel, w, bias, y, offs, koffs, geo, kind, a0, a1):
    """y (N, M, OH, OW) = act(conv(x (N, C, H, W)) + bias) through tiles over packed panels: xq
    as conv_tile's (N, planes + NR), panel (tasks, K * RS) one per task, w and bias packed by
    conv_tile.pack_weights, offs the taps' offsets in xq, koffs = arange(K) * RS; the batch's
    position tiles are cut into ``tasks`` runs."""
    N, C = x.shape[0], x.shape[1]
    M, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    Wq = geo[3]
    for nc in prange(N * C):
        split_input(x, xq, nc, geo)
    P = OH * OW
    Q = N * P
    K = offs.shape[0]
    nmb = -(-M // MR)
    tasks = panel.shape[0]
    n_tiles = -(-Q // NR)
    per = -(-n_tiles // tasks)  # tiles per task
    yf = y.reshape(N * M * P)
    for t in prange(tasks):
        pan = panel[t]
        q_lo, q_hi = min(Q, t * per * NR), min(Q, (t + 1) * per * NR)
        for q0 in range(q_lo, q_hi, NR):
            _pack(xq, pan, offs, q0, P, OW, Wq, Q)
            n0 = q0 // P
            for mb in range(nmb):
                tile(pan, 0, q0, koffs, w, mb * K * MR, yf, mb * MR * P, P, n0, q0 - n0 * P, P, P, M * P, Q, bias,
                     mb * MR, min(MR, M - mb * MR), kind == 1)
        if kind > 1:
            for n in range(q_lo // P, -(-q_hi // P)):
                lo, hi = max(q_lo - n * P, 0), min(q_hi - n * P, P)
                for m in range(M):
                    seg = yf[(n * M + m) * P + lo:(n * M + m) * P + hi]
                    act_inplace(seg, kind, a0, a1)


conv_panel = Twin(_conv_panel_body)


def panel_shape(k: int, tasks: int) -> tuple[int, int]:
    """The panels of ``tasks`` tasks for K = ``k`` taps."""
    return tasks, k * RS


def koffs(k: int) -> np.ndarray:
    """Where the panel's rows start."""
    return np.arange(k, dtype=np.int64) * RS


def tasks_of(positions: int, threads: int) -> int:
    """Tasks for ``positions`` output positions: one per thread, as long as each gets a tile."""
    return max(1, min(threads, -(-positions // NR)))


def waste(positions: int) -> float:
    """Fraction of the computed positions thrown away: the end of the last tile."""
    return 1.0 - positions / (-(-positions // NR) * NR)


def cost(positions: int, m: int) -> float:
    """Work relative to a plain GEMM of the same size: the last tile's waste and the copy, about
    _PACK_MACS multiply-adds per value packed, once for every MR * ceil(M / MR) channels."""
    return 1.0 / (1.0 - waste(positions)) + _PACK_MACS / (-(-m // MR) * MR)
