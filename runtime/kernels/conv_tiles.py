"""The register-tile paths of the float convolution (runtime/kernels/conv.py): which layout, and
how each is called from the plan function (``emit``) or step by step (``run``).

Three layouts of the same arithmetic, y[m, q] = act(bias[m] + sum_k w[m, k] * x[k-th tap of q]):

* ``wide`` (conv_tile.py): consecutive positions in the vectors, read as runs of the wide rows
  of the phase-split image; wastes the wide columns (none on planes of whole tiles) and the
  padding of the last block of MR channels (or of MR_SHORT, on the short tiles);
* ``panel`` (conv_panel.py): the same tiles over a packed copy of every tap's values, positions
  of the whole batch contiguous; wastes the end of the last tile, pays the copy (about
  ``conv_panel._PACK_MACS`` multiply-adds per value, once per MR * ceil(M / MR) channels);
* ``channels`` (conv_channels.py): output channels in the vectors, any positions broadcast;
  wastes the padding of the last tile and channel block, pays scattered stores (small planes).

``choose`` estimates each one's work relative to a plain GEMM and takes the least, when it
throws away at most ``max_waste`` of what it computes (else the GEMM path serves).

A pointwise conv with stride 1 and no padding reads x itself instead, on the tiles of
runtime/kernels/conv_pointwise.py.
"""

from __future__ import annotations

import numpy as np

from runtime.codegen import Expr
from runtime.kernels import conv_channels as chans
from runtime.kernels import conv_panel as panels
from runtime.kernels import conv_tile as tiles
from runtime.kernels.conv_gemm import workers
from runtime.threads import current_threads


class TilePlan:
    """One float32 convolution of one group on register tiles of layout ``kind``."""

    def __init__(self, kind: str, x4, y4, w4, strides, dil, pads, split_macs: int):
        self.kind, self.x4, self.y4 = kind, tuple(x4), tuple(y4)
        m, c, kh, kw = w4
        self.m, self.k = m, c * kh * kw
        self.macs = self.y4[0] * m * self.y4[2] * self.y4[3] * self.k
        self.split_macs = split_macs
        self.short = False
        self.offs, self.geo, plane = tiles.geometry(c, self.y4[2:], (kh, kw), strides, dil, pads)
        self.input_shape = (self.x4[0], plane + tiles.NR_SHORT)  # each image's planes, and room to read past
        self.tables = chans.positions(self.y4[0], m, self.y4[2:], self.geo[3], self.input_shape[1]) \
            if kind == "channels" else None

    @staticmethod
    def choose(x4, y4, w4, strides, dil, pads, wq: int, kinds, max_waste: float, split_macs: int) -> TilePlan | None:
        """The layout of least work among ``kinds`` for output rows computed ``wq`` wide, or None."""
        n, m, oh, ow = y4
        k = w4[1] * w4[2] * w4[3]
        wide = [-(-m // mr) * mr / m / (1.0 - tiles.waste(oh, ow, wq, nr=nr))
                for mr, nr in ((tiles.MR, tiles.NR), (tiles.MR_SHORT, tiles.NR_SHORT))]
        costs = {"wide": min(wide), "panel": panels.cost(n * oh * ow, m), "channels": chans.cost(n, oh * ow, m, k)}
        kind = min(kinds, key=costs.get)
        if 1.0 - 1.0 / costs[kind] > max_waste:
            return None
        plan = TilePlan(kind, x4, y4, w4, strides, dil, pads, split_macs)
        plan.short = kind == "wide" and wide[1] < wide[0]
        return plan

    def pack(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights (M, K) and bias (M) in this layout's order."""
        if self.kind == "channels":
            return chans.pack_weights(w, b)
        return tiles.pack_weights(w, b, tiles.MR_SHORT if self.short else tiles.MR)

    def _threads(self, threads: int) -> int:
        return workers(self.macs, threads, self.split_macs)

    def _tasks(self, threads: int) -> int:
        """Tasks (wide: row runs per image) for ``threads`` threads."""
        t = self._threads(threads)
        n, _, oh, ow = self.y4
        if self.kind == "wide":
            return tiles.chunks_of(n, oh, t)
        return (chans if self.kind == "channels" else panels).tasks_of(n * oh * ow, t)

    def emit(self, e, x: str, y: str, w, b, act) -> None:
        """The call in generated code; x and y are the names of the input and output arrays."""
        t = self._threads(e.threads)
        work = self.macs if t > 1 else 0
        tasks = self._tasks(e.threads)
        xq = e.work(self.input_shape, np.float32, "xq", zeroed=True)
        x, y = Expr(f"{x}.reshape({e.lit(self.x4)})"), Expr(f"{y}.reshape({e.lit(self.y4)})")
        if self.kind == "channels":
            e.call(chans.conv_channels, x, xq, w, b, y, self.offs, *self.tables, self.geo, *act, tasks, work=work)
        elif self.kind == "panel":
            pan = e.work(panels.panel_shape(self.k, tasks), np.float32, "panel")
            e.call(panels.conv_panel, x, xq, pan, w, b, y, self.offs, panels.koffs(self.k), self.geo, *act, work=work)
        else:
            e.call(tiles.conv_tile, x, xq, w, b, y, self.offs, self.geo, *act, tasks, self.short, work=work)

    def make_scratch(self) -> dict:
        return {"xq": np.zeros(self.input_shape, np.float32)}

    def run(self, x: np.ndarray, y: np.ndarray, w, b, act, scratch: dict) -> None:
        x, y = x.reshape(self.x4), y.reshape(self.y4)
        t = self._threads(current_threads())
        work = self.macs if t > 1 else 0
        tasks = self._tasks(current_threads())
        if self.kind == "channels":
            chans.conv_channels(work, x, scratch["xq"], w, b, y, self.offs, *self.tables, self.geo, *act, tasks)
        elif self.kind == "panel":
            if tasks not in scratch:  # the panels for this thread count
                scratch[tasks] = np.empty(panels.panel_shape(self.k, tasks), np.float32)
            panels.conv_panel(work, x, scratch["xq"], scratch[tasks], w, b, y, self.offs, panels.koffs(self.k), self.geo,
                              *act)
        else:
            tiles.conv_tile(work, x, scratch["xq"], w, b, y, self.offs, self.geo, *act, tasks, self.short)

