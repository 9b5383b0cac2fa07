"""Pointwise float convolution (1x1 kernel, stride 1, no padding) read straight from the input planes.

Over the P = H * W positions of image n:

    y[n, m, p] = act(bias[m] + sum_c w[m, c] * x[n, c, p])

* The first P - P % LANES positions, one vector of LANES positions at a time: ``tile_col``
  (conv_tile's tile of PMR output channels x one vector) reads tap c as the run x[n, c, p:p+LANES]
  of the input itself (offs[c] = c * P), so nothing is copied, and stores the PMR x LANES block
  straight into y, bias and Relu added in the registers. One vector per tile means no tile
  reaches past a plane's last whole vector, and PMR = 16 rows on AVX-512 keep 16 accumulators
  busy (Bi-Real Net's 1x1 shortcuts: 57 G multiply-adds/s, where tiles of two vectors computed
  49 = 32 + 17 positions of a 7x7 plane as 64).
* The last r = P % LANES positions (none when the planes are whole vectors) are a product with the
  roles turned around, output channels in the vectors: y[n, :, p] = [x[n, :, p], 1] @ [w^T; bias]
  over ``wt``, w^T with the bias as its last row, cut into panels of NR_SHORT channels (contiguous,
  as runtime/kernels/dense.py packs its constant matrices). Up to MR_SHORT positions share one
  pass over wt (conv_tile.tile_short; a lone position takes ``tile_row``, one row, so it computes
  nothing for nothing); the row of channels lands in ``tmp`` and is copied into y's column p.

Threads: the output channels are cut into runs of whole slabs (SLAB channels: whole tiles of PMR
and whole panels of NR_SHORT); a task takes one image and one run, so batch 1 splits too.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.codegen import Expr
from runtime.kernels.base import Twin
from runtime.kernels.conv_tile import LANES, MR_SHORT, NR_SHORT, _make_tile, chunks_of, tile_row, tile_short
from runtime.kernels.nn import act_inplace
from runtime.threads import current_threads

PMR = 8 if LANES == 8 else 16  # AVX2's 16 registers hold 8 accumulators, AVX-512's and NEON's 32 hold 16
tile_col = _make_tile(PMR, 1)
SLAB = math.lcm(PMR, NR_SHORT)  # channels a task's run is made of


@njit(cache=True, nogil=True)
def _gather(xf, P, K, p, rows, mr, ap):
    """ap[k * mr + j] = x[k, p + j] for j < rows (0 for rows <= j < mr), and 1 at k = K (the bias row)."""
    for k in range(K + 1):
        for j in range(mr):
            v = 1.0 if k == K else (xf[k * P + p + j] if j < rows else 0.0)
            ap[k * mr + j] = v


@njit(cache=True, nogil=True)
def _tail(xf, wt, woffs, zero, ap, tmp, yf, M, P, K, m0, m1, relu):
    """Positions P - P % LANES .. P - 1 of one image, channels m0 <= m < m1 (module docstring)."""
    mp = tmp.shape[0] // MR_SHORT  # tmp's row stride
    p = P - P % LANES
    while p < P:
        rows = min(MR_SHORT, P - p)
        mr = 1 if rows == 1 else MR_SHORT
        _gather(xf, P, K, p, rows, mr, ap)
        for q in range(m0, m1, NR_SHORT):
            if rows == 1:
                tile_row(wt, q * (K + 1), q, woffs, ap, 0, tmp, 0, mp, 0, q, M, M, M, M, zero, 0, 1, relu)
            else:
                tile_short(wt, q * (K + 1), q, woffs, ap, 0, tmp, 0, mp, 0, q, M, M, M, M, zero, 0, rows, relu)
        for j in range(rows):
            for m in range(m0, m1):
                yf[m * P + p + j] = tmp[j * mp + m]
        p += rows


@njit(cache=True, nogil=True)
def _task(x, offs, w, bias, wt, woffs, zero, ap, tmp, y, n, m0, m1, kind, a0, a1):
    """Image n, output channels m0 <= m < m1 (m0 a multiple of SLAB)."""
    M, P = y.shape[1], y.shape[2]
    K = offs.shape[0]
    if m1 <= m0:
        return
    xf, yf = x[n], y[n].reshape(M * P)
    relu = kind == 1
    mb1 = -(-m1 // PMR)
    for pos in range(0, P - P % LANES, LANES):
        for mb in range(m0 // PMR, mb1):
            tile_col(xf, pos, pos, offs, w, mb * K * PMR, yf, mb * PMR * P, P, 0, pos, P, P, P, P, bias, mb * PMR,
                     min(PMR, M - mb * PMR), relu)
    if P % LANES:
        _tail(xf, wt, woffs, zero, ap, tmp, yf, M, P, K, m0, m1, relu)
    if kind > 1:
        act_inplace(yf[m0 * P:m1 * P], kind, a0, a1)


def _conv_pointwise_body(x, offs, w, bias, wt, woffs, zero, ap, tmp, y, parts, kind, a0, a1):
    """y (N, M, P) = act(w @ x[n] + bias) for x (N, C * P), w and bias packed by ``pack``; task t
    of N * parts takes image t // parts and run t % parts of the channels, with its own rows ap[t]
    and tmp[t] for the tail."""
    N, M = y.shape[0], y.shape[1]
    slabs = -(-M // SLAB)
    per = -(-slabs // parts) * SLAB  # channels per run
    for t in prange(N * parts):
        n = t // parts
        m0 = min(M, (t - n * parts) * per)
        _task(x, offs, w, bias, wt, woffs, zero, ap[t], tmp[t], y, n, m0, min(M, m0 + per), kind, a0, a1)


conv_pointwise = Twin(_conv_pointwise_body)


class PointwisePlan:
    """One float32 pointwise conv of one group on this module's tiles: sizes, packing, the call."""

    def __init__(self, x4, y4, split_macs: int):
        n, self.c, h, w = x4
        self.n, self.m, self.p = n, y4[1], h * w
        self.macs = n * self.m * self.c * self.p
        self.split_macs = split_macs
        self.offs = np.arange(self.c, dtype=np.int64) * self.p
        self.woffs = np.arange(self.c + 1, dtype=np.int64) * NR_SHORT
        self.zero = np.zeros(MR_SHORT, np.float32)
        self.mp = -(-self.m // NR_SHORT) * NR_SHORT

    @staticmethod
    def of(x4, y4, split_macs: int) -> PointwisePlan | None:
        """The plan, when the planes hold at least one whole vector (else BLAS serves)."""
        return PointwisePlan(x4, y4, split_macs) if x4[2] * x4[3] >= LANES else None

    def pack(self, w: np.ndarray, b: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """((w in blocks of PMR channels, tap-major; wt), bias padded): wt is [w^T; bias] in panels
        of NR_SHORT channels, (K + 1) x NR_SHORT each, contiguous (a placeholder when there is no
        tail)."""
        m, k = w.shape
        nb = -(-m // PMR)
        wpad = np.zeros((nb * PMR, k), np.float32)
        wpad[:m] = w
        bpad = np.zeros(nb * PMR, np.float32)
        bpad[:m] = b
        wp = np.ascontiguousarray(wpad.reshape(nb, PMR, k).transpose(0, 2, 1)).reshape(-1)
        if self.p % LANES == 0:
            return (wp, np.zeros(1, np.float32)), bpad
        panels = self.mp // NR_SHORT
        wb = np.zeros((k + 1, self.mp), np.float32)
        wb[:k, :m] = w.T
        wb[k, :m] = b
        wt = np.ascontiguousarray(wb.reshape(k + 1, panels, NR_SHORT).transpose(1, 0, 2)).reshape(-1)
        return (wp, wt), bpad

    def _split(self, threads: int) -> tuple[int, int]:
        """(parts, work): runs of channels per image, and the work a call reports."""
        t = threads if self.macs >= self.split_macs and threads > 1 else 1
        parts = chunks_of(self.n, -(-self.m // SLAB), t)
        return parts, self.macs if t > 1 else 0

    def _scratch_shapes(self, parts: int) -> tuple[tuple[int, int], tuple[int, int]]:
        tasks = self.n * parts
        return (tasks, (self.c + 1) * MR_SHORT), (tasks, MR_SHORT * self.mp)

    def emit(self, e, x: str, y: str, w, b, act) -> None:
        """The call in generated code; x and y are the names of the input and output arrays."""
        parts, work = self._split(e.threads)
        ap_shape, tmp_shape = self._scratch_shapes(parts)
        xs = Expr(f"{x}.reshape({e.lit((self.n, self.c * self.p))})")
        ys = Expr(f"{y}.reshape({e.lit((self.n, self.m, self.p))})")
        e.call(conv_pointwise, xs, self.offs, w[0], b, w[1], self.woffs, self.zero,
               e.work(ap_shape, np.float32, "ap"), e.work(tmp_shape, np.float32, "tmp"), ys, parts, *act, work=work)

    def make_scratch(self) -> dict:
        return {}

    def run(self, x: np.ndarray, y: np.ndarray, w, b, act, scratch: dict) -> None:
        parts, work = self._split(current_threads())
        if parts not in scratch:  # the tail's rows for this many tasks
            scratch[parts] = tuple(np.zeros(s, np.float32) for s in self._scratch_shapes(parts))
        ap, tmp = scratch[parts]
        conv_pointwise(work, x.reshape(self.n, self.c * self.p), self.offs, w[0], b, w[1], self.woffs, self.zero, ap,
                       tmp, y.reshape(self.n, self.m, self.p), parts, *act)
