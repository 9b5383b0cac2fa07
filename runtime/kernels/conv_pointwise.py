"""Pointwise float convolution (1x1 kernel, stride 1, no padding) read straight from the input planes.

Over the P = H * W positions of image n:

    y[n, m, p] = act(bias[m] + sum_c w[m, c] * x[n, c, p])

one group of GW output channels at a time (TV vectors of them), their weights packed tap-major,
w[(g * C + c) * GW + i] = w[g * GW + i, c] (``pack``), so that they are read from memory once, as a
whole model finds them, and stay in cache for every position:

* the first P - P % LANES positions, one vector of LANES positions at a time, each block of PMR
  channels of the group on ``tile_col`` (conv_tile's tile of PMR rows x one vector, its weights
  GW apart): tap c is the run x[n, c, p:p+LANES] of the input itself (offs[c] = c * P), so nothing
  is copied, and the PMR x LANES block is stored straight into y, bias and Relu added in the
  registers. One vector per tile means no tile reaches past a plane's last whole vector, and PMR =
  16 rows on AVX-512 keep 16 accumulators busy (Bi-Real Net's 1x1 shortcuts: 57 G multiply-adds/s,
  where tiles of two vectors computed the 49 = 32 + 17 positions of a 7x7 plane as 64);
* the last r = P % LANES positions (none when the planes are whole vectors), TR at a time and
  then one by one, the roles turned around: ``tile_tail`` (``tile_tail1``) holds the group's GW
  channels in its TV vectors and broadcasts the inputs of TR positions (of one), packed once per
  task into ``xt`` (``_pack_tail``); TV independent sums even for one position, so the tail costs
  a few percent of a 7x7 layer. Its GW x TR block lands in ``tmp``, gets the bias and activation
  there and is copied into y's columns.

Threads: the groups are cut into runs; a task takes one image and one run, so batch 1 splits too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import Twin
from runtime.kernels.conv_tile import LANES, _make_tile, chunks_of
from runtime.kernels.nn import act_inplace
from runtime.threads import current_threads

# rows of the position tiles, and vectors of a group: 16 + 4 x TR accumulators in AVX-512's and
# NEON's 32 registers, 8 + 2 x TR in AVX2's 16
PMR, TV = {16: (16, 4), 8: (8, 2)}.get(LANES, (16, 4))
TR = 4  # tail positions per tail tile
GW = TV * LANES  # channels per group
tile_col = _make_tile(PMR, 1, GW)
tile_tail = _make_tile(TR, TV)
tile_tail1 = _make_tile(1, TV)


@njit(cache=True, nogil=True)
def _pack_tail(xf, P, K, xt):
    """The r = P % LANES last positions, quads first: xt[(q * K + k) * TR + j] = x[k, P - r + q * TR
    + j] for the r // TR quads, then xt[(r // TR) * K * TR + s * K + k] = x[k, P - r % TR + s] for the
    r % TR positions left, one row each."""
    r = P % LANES
    nq = r // TR
    for q in range(nq):
        for k in range(K):
            for j in range(TR):
                xt[(q * K + k) * TR + j] = xf[k * P + P - r + q * TR + j]
    for s in range(r - nq * TR):
        for k in range(K):
            xt[nq * K * TR + s * K + k] = xf[k * P + P - r + nq * TR + s]


@njit(cache=True, nogil=True)
def _tail(w, bias, koffs, xt, zero, tmp, yf, g, M, P, K, relu):
    """Group g's channels at the last P % LANES positions (module docstring): a tile of TR rows
    per quad, then a tile of one row per position left (a lone position's TV sums cost a quarter
    of a tile of TR rows, of which three would be computed for nothing)."""
    r = P % LANES
    nq = r // TR
    for q in range(nq + r - nq * TR):
        rows = TR if q < nq else 1
        if q < nq:
            tile_tail(w, g * K * GW, 0, koffs, xt, q * K * TR, tmp, 0, GW, 0, 0, GW, GW, GW, GW, zero, 0, TR, False)
        else:
            tile_tail1(w, g * K * GW, 0, koffs, xt, nq * K * TR + (q - nq) * K, tmp, 0, GW, 0, 0, GW, GW, GW, GW, zero,
                       0, 1, False)
        p0 = P - r + (q * TR if q < nq else nq * TR + q - nq)
        for j in range(rows):
            for c in range(min(GW, M - g * GW)):
                v = tmp[j * GW + c] + bias[g * GW + c]
                if relu and not v > 0.0:  # as the tiles' Relu: 0 for NaN too
                    v = 0.0
                yf[(g * GW + c) * P + p0 + j] = v


@njit(cache=True, nogil=True)
def _task(x, offs, w, bias, koffs, zero, xt, tmp, y, n, g0, g1, kind, a0, a1):
    """Image n, channel groups g0 <= g < g1."""
    M, P = y.shape[1], y.shape[2]
    K = offs.shape[0]
    if g1 <= g0:
        return
    xf, yf = x[n], y[n].reshape(M * P)
    relu = kind == 1
    if P % LANES:
        _pack_tail(xf, P, K, xt)
    for g in range(g0, g1):
        for mb in range(g * GW // PMR, min(g * GW + GW, M + PMR - 1) // PMR):
            mvalid = min(PMR, M - mb * PMR)
            for pos in range(0, P - P % LANES, LANES):
                tile_col(xf, pos, pos, offs, w, g * K * GW + mb * PMR - g * GW, yf, mb * PMR * P, P, 0, pos, P, P, P, P,
                         bias, mb * PMR, mvalid, relu)
        if P % LANES:
            _tail(w, bias, koffs, xt, zero, tmp, yf, g, M, P, K, relu)
    if kind > 1:
        m1 = min(M, g1 * GW)
        act_inplace(yf[g0 * GW * P:m1 * P], kind, a0, a1)


def _conv_pointwise_body(x, offs, w, bias, koffs, zero, xt, tmp, y, parts, kind, a0, a1):
    """y (N, M, P) = act(w @ x[n] + bias) for x (N, C * P), w and bias packed by ``pack``; task t
    of N * parts takes image t // parts and run t % parts of the channel groups, with its own
    tail rows xt[t] and block tmp[t]."""
    N, M = y.shape[0], y.shape[1]
    groups = -(-M // GW)
    per = -(-groups // parts)
    for t in prange(N * parts):
        n = t // parts
        g0 = min(groups, (t - n * parts) * per)
        _task(x, offs, w, bias, koffs, zero, xt[t], tmp[t], y, n, g0, min(groups, g0 + per), kind, a0, a1)


conv_pointwise = Twin(_conv_pointwise_body)


class PointwisePlan:
    """One float32 pointwise conv of one group on this module's tiles: sizes, packing, the call."""

    def __init__(self, x4, y4, split_macs: int):
        n, self.c, h, w = x4
        self.n, self.m, self.p = n, y4[1], h * w
        self.macs = n * self.m * self.c * self.p
        self.split_macs = split_macs
        self.offs = np.arange(self.c, dtype=np.int64) * self.p
        self.koffs = np.arange(self.c, dtype=np.int64) * GW
        self.zero = np.zeros(TR, np.float32)

    @staticmethod
    def of(x4, y4, split_macs: int) -> PointwisePlan | None:
        """The plan, when the planes hold at least one whole vector (else BLAS serves)."""
        return PointwisePlan(x4, y4, split_macs) if x4[2] * x4[3] >= LANES else None

    def pack(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """w (M, C) in groups of GW channels, tap-major (packed[(g * C + c) * GW + i] =
        w[g * GW + i, c], zero rows past M), and the bias padded alike."""
        m, k = w.shape
        ng = -(-m // GW)
        wpad = np.zeros((ng * GW, k), np.float32)
        wpad[:m] = w
        bpad = np.zeros(ng * GW, np.float32)
        bpad[:m] = b
        return np.ascontiguousarray(wpad.reshape(ng, GW, k).transpose(0, 2, 1)).reshape(-1), bpad

    def _split(self, threads: int) -> tuple[int, int]:
        """(parts, work): runs of channel groups per image, and the work a call reports."""
        t = threads if self.macs >= self.split_macs and threads > 1 else 1
        parts = chunks_of(self.n, -(-self.m // GW), t)
        return parts, self.macs if t > 1 else 0

    def _scratch_shapes(self, parts: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per task: the tail's packed positions and one block of results."""
        tasks = self.n * parts
        return (tasks, max(1, (self.p % LANES) * self.c)), (tasks, TR * GW)

    def emit(self, e, x: str, y: str, w, b, act) -> None:
        """The call in generated code; x and y are the names of the input and output arrays."""
        parts, work = self._split(e.threads)
        xt_shape, tmp_shape = self._scratch_shapes(parts)
        xs = Expr(f"{x}.reshape({e.lit((self.n, self.c * self.p))})")
        ys = Expr(f"{y}.reshape({e.lit((self.n, self.m, self.p))})")
        e.call(conv_pointwise, xs, self.offs, w, b, self.koffs, self.zero, e.work(xt_shape, np.float32, "xt"),
               e.work(tmp_shape, np.float32, "tmp"), ys, parts, *act, work=work)

    def make_scratch(self) -> dict:
        return {}

    def run(self, x: np.ndarray, y: np.ndarray, w, b, act, scratch: dict) -> None:
        parts, work = self._split(current_threads())
        if parts not in scratch:  # the tail's scratch for this many tasks
            scratch[parts] = tuple(np.zeros(s, np.float32) for s in self._scratch_shapes(parts))
        xt, tmp = scratch[parts]
        conv_pointwise(work, x.reshape(self.n, self.c * self.p), self.offs, w, b, self.koffs, self.zero, xt, tmp,
                       y.reshape(self.n, self.m, self.p), parts, *act)
