"""Pointwise float convolution (1x1 kernel, stride 1, no padding) read straight from the input planes.

Over the P = H * W positions of image n:

    y[n, m, p] = act(bias[m] + sum_c w[m, c] * x[n, c, p])

one block of PMR output channels at a time, its weights packed tap-major and contiguous
(conv_tile.pack_weights): a whole model finds them out of cache, and read once, in order, they
stream 7-11% faster than groups of four blocks interleaved; then they stay in L1 for every position:

* the first P - P % LANES positions, one vector of LANES positions at a time: ``tile_col``
  (conv_tile's tile of PMR rows x one vector) reads tap c as the run x[n, c, p:p+LANES] of the
  input itself (offs[c] = c * P), so nothing is copied, and stores the PMR x LANES block straight
  into y, bias and Relu added in the registers. One vector per tile means no tile reaches past a
  plane's last whole vector, and PMR = 16 rows on AVX-512 keep 16 accumulators busy (Bi-Real Net's
  1x1 shortcuts: 57 G multiply-adds/s, where tiles of two vectors computed the 49 = 32 + 17
  positions of a 7x7 plane as 64);
* the last r = P % LANES positions (none when the planes are whole vectors), the roles turned
  around: ``tile_tail`` holds the block's PMR channels in its vectors and broadcasts TR rows of
  inputs, packed once per task into ``xt`` (``_pack_tail``): four positions per pass, then each
  position left alone in a pass of its own with its taps dealt to the TR rows by c % TR (its sum
  TR chains, added on the way out: no faster than one chain on AVX-512, whose one 16-float
  multiply-add a cycle the TR rows fill, but no slower, and the rows need no other tile). A pass
  costs as much as four positions (Bi-Real Net's 7x7 shortcut: 9 us for its one tail position,
  where a layout of groups of four blocks took 2 us but read its weights 7-11% slower cold). The
  PMR x TR block lands in ``tmp``, gets the bias and activation there and is copied into y's
  columns.

On AVX2 (8 floats, 16 registers) the whole vectors go on conv_pointwise_pairs' tiles instead:
6 rows x 2 vectors (12 chains where one vector of 8 rows kept 8, exactly the latency limit) over
x packed per 16 positions once per call, blocks of PMR = 24 rows (the tail tiles' 3 vectors,
12 accumulators), and each lone tail position on a tile of its own that reads only its column
(``_lone_positions``): Bi-Real Net's 1x1 shortcuts 0.58-0.89x onnxruntime -> 0.97-1.01x at
one thread (layer medians, benchmarks/bench_float_conv.py).

Threads: the blocks are cut into runs; a task takes one image and one run, so batch 1 splits too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import Twin
from runtime.kernels.conv_pointwise_pairs import (
    NRP,
    PB,
    _lone_positions,
    _pack_lone,
    _pack_pair,
    _pair_columns,
    pair_tiles,
)
from runtime.kernels.conv_tile import LANES, _make_tile, chunks_of, pack_weights
from runtime.kernels.nn import act_inplace
from runtime.threads import current_threads

PAIRS = LANES == 8  # AVX2: 16 registers, the columns on conv_pointwise_pairs' tiles
PMR = PB if PAIRS else 16  # AVX-512's and NEON's 32 registers hold 16 accumulators
TR = 4  # rows of the tail tiles
tile_col = None if PAIRS else _make_tile(PMR, 1)
tile_tail = _make_tile(TR, PMR // LANES)


@njit(cache=True, nogil=True)
def tail_passes(p: int) -> int:
    """Passes of the tail tiles over a block for planes of p positions."""
    r = p % LANES
    return r // TR + r % TR


@njit(cache=True, nogil=True)
def _pack_tail(xf, P, K, xt, passes):
    """The rows of the tail passes (module docstring) for the r = P % LANES last positions: pass
    q < nq = r // TR, xt[(q * K + k) * TR + j] = x[k, P - r + q * TR + j]; a later pass, one
    position p = P - r + nq * TR + q - nq: xt[(q * K + k) * TR + j] = x[k, p] where k % TR == j,
    else 0; the first ``passes`` passes."""
    r = P % LANES
    nq = r // TR
    for q in range(passes):
        for k in range(K):
            for j in range(TR):
                if q < nq:
                    v = xf[k * P + P - r + q * TR + j]
                else:
                    v = xf[k * P + P - r + nq * TR + q - nq] if k % TR == j else 0.0
                xt[(q * K + k) * TR + j] = v


@njit(cache=True, nogil=True)
def _tail(w, bias, koffs, xt, zero, tmp, yf, mb, mvalid, P, K, relu, passes):
    """Block mb's channels at the last P % LANES positions (module docstring): the first
    ``passes`` passes."""
    r = P % LANES
    nq = r // TR
    for q in range(passes):
        tile_tail(w, mb * K * PMR, 0, koffs, xt, q * K * TR, tmp, 0, PMR, 0, 0, PMR, PMR, PMR, PMR, zero, 0, TR, False)
        for j in range(TR if q < nq else 1):
            for c in range(mvalid):
                v = tmp[j * PMR + c]
                if q >= nq:  # one position's TR partial sums
                    for i in range(1, TR):
                        v += tmp[i * PMR + c]
                v += bias[mb * PMR + c]
                if relu and not v > 0.0:  # as the tiles' Relu: 0 for NaN too
                    v = 0.0
                yf[(mb * PMR + c) * P + P - r + (q * TR + j if q < nq else nq * TR + q - nq)] = v


@njit(cache=True, nogil=True)
def _task(x, xp, offs, w, bias, koffs, zero, xt, tmp, y, n, b0, b1, kind, a0, a1):
    """Image n, channel blocks b0 <= mb < b1 (xp: unused, ``_task_pairs``' packed tiles)."""
    M, P = y.shape[1], y.shape[2]
    K = offs.shape[0]
    if b1 <= b0:
        return
    xf, yf = x[n], y[n].reshape(M * P)
    relu = kind == 1
    passes = tail_passes(P)
    if P % LANES:
        _pack_tail(xf, P, K, xt, passes)
    for mb in range(b0, b1):
        mvalid = min(PMR, M - mb * PMR)
        for pos in range(0, P - P % LANES, LANES):
            tile_col(xf, pos, pos, offs, w, mb * K * PMR, yf, mb * PMR * P, P, 0, pos, P, P, P, P, bias, mb * PMR,
                     mvalid, relu)
        if P % LANES:
            _tail(w, bias, koffs, xt, zero, tmp, yf, mb, mvalid, P, K, relu, passes)
    if kind > 1:
        act_inplace(yf[b0 * PMR * P:min(M, b1 * PMR) * P], kind, a0, a1)


@njit(cache=True, nogil=True)
def _task_pairs(x, xp, poffs, w, bias, koffs, zero, xt, tmp, y, n, b0, b1, kind, a0, a1):
    """Image n, channel blocks b0 <= mb < b1, the columns from the image's tiles packed into xp
    (conv_pointwise_pairs)."""
    M, P = y.shape[1], y.shape[2]
    K = poffs.shape[0]
    if b1 <= b0:
        return
    xf, yf = x[n], y[n].reshape(M * P)
    relu = kind == 1
    for u in range(pair_tiles(P)):
        _pack_pair(xf, P, u, xp)
    nq = P % LANES // TR
    _pack_tail(xf, P, K, xt, nq)
    xl = xt[nq * K * TR:]  # the lone positions' columns
    _pack_lone(xf, P, P - P % TR, xl)
    for mb in range(b0, b1):
        _pair_columns(xp, poffs, w, bias, yf, mb, M, P, relu)
        _tail(w, bias, koffs, xt, zero, tmp, yf, mb, min(PMR, M - mb * PMR), P, K, relu, nq)
        _lone_positions(w, bias, xl, tmp, yf, mb, M, P, K, P - P % TR, relu)
    if kind > 1:
        act_inplace(yf[b0 * PMR * P:min(M, b1 * PMR) * P], kind, a0, a1)


_TASK = _task_pairs if PAIRS else _task


def _conv_pointwise_body(x, offs, w, bias, koffs, zero, xt, tmp, xp, y, parts, kind, a0, a1):
    """y (N, M, P) = act(w @ x[n] + bias) for x (N, C * P), w and bias packed by ``pack``; task t
    of N * parts takes image t // parts and run t % parts of the channel blocks, with its own
    tail rows xt[t], block tmp[t] and, on AVX2, its image packed into xp[t] (tiles * C * NRP; an
    image split over threads is packed by each, which costs less than a second parallel region)."""
    N, M = y.shape[0], y.shape[1]
    blocks = -(-M // PMR)
    per = -(-blocks // parts)
    for t in prange(N * parts):
        n = t // parts
        b0 = min(blocks, (t - n * parts) * per)
        _TASK(x, xp[t], offs, w, bias, koffs, zero, xt[t], tmp[t], y, n, b0, min(blocks, b0 + per), kind, a0, a1)


conv_pointwise = Twin(_conv_pointwise_body)


class PointwisePlan:
    """One float32 pointwise conv of one group on this module's tiles: sizes, packing, the call."""

    def __init__(self, x4, y4, split_macs: int):
        n, self.c, h, w = x4
        self.n, self.m, self.p = n, y4[1], h * w
        self.macs = n * self.m * self.c * self.p
        self.split_macs = split_macs
        self.offs = np.arange(self.c, dtype=np.int64) * (NRP if PAIRS else self.p)
        self.koffs = np.arange(self.c, dtype=np.int64) * PMR
        self.zero = np.zeros(TR, np.float32)

    @staticmethod
    def of(x4, y4, split_macs: int) -> PointwisePlan | None:
        """The plan, when the planes hold at least one whole vector (else BLAS serves)."""
        return PointwisePlan(x4, y4, split_macs) if x4[2] * x4[3] >= LANES else None

    def pack(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """w (M, C) in blocks of PMR channels, tap-major, and the bias padded alike
        (conv_tile.pack_weights)."""
        return pack_weights(w, b, PMR)

    def _split(self, threads: int) -> tuple[int, int]:
        """(parts, work): runs of channel blocks per image, and the work a call reports."""
        t = threads if self.macs >= self.split_macs and threads > 1 else 1
        parts = chunks_of(self.n, -(-self.m // PMR), t)
        return parts, self.macs if t > 1 else 0

    def _scratch_shapes(self, parts: int) -> tuple[tuple[int, int], ...]:
        """Per task: the tail's packed positions, one block of results and the packed tiles of the
        pairs body."""
        tasks = self.n * parts
        xp = (tasks, pair_tiles(self.p) * self.c * NRP if PAIRS else 1)
        return (tasks, max(1, tail_passes(self.p) * self.c * TR)), (tasks, TR * PMR), xp

    def emit(self, e, x: str, y: str, w, b, act) -> None:
        """The call in generated code; x and y are the names of the input and output arrays."""
        parts, work = self._split(e.threads)
        xt_shape, tmp_shape, xp_shape = self._scratch_shapes(parts)
        xs = Expr(f"{x}.reshape({e.lit((self.n, self.c * self.p))})")
        ys = Expr(f"{y}.reshape({e.lit((self.n, self.m, self.p))})")
        e.call(conv_pointwise, xs, self.offs, w, b, self.koffs, self.zero, e.work(xt_shape, np.float32, "xt"),
               e.work(tmp_shape, np.float32, "tmp"), e.work(xp_shape, np.float32, "xp"), ys, parts, *act, work=work)

    def make_scratch(self) -> dict:
        return {}

    def run(self, x: np.ndarray, y: np.ndarray, w, b, act, scratch: dict) -> None:
        parts, work = self._split(current_threads())
        if parts not in scratch:  # the tail's scratch for this many tasks
            scratch[parts] = tuple(np.zeros(s, np.float32) for s in self._scratch_shapes(parts))
        xt, tmp, xp = scratch[parts]
        conv_pointwise(work, x.reshape(self.n, self.c * self.p), self.offs, w, b, self.koffs, self.zero, xt, tmp, xp,
                       y.reshape(self.n, self.m, self.p), parts, *act)
