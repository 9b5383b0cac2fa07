"""Strided copies: the data movement of Transpose, Slice, Split, Concat, Expand, Tile and Pad,
written into the plan function (runtime/codegen.py) as calls of one Numba kernel.

Each of those ops copies an index box: for every index i of ``shape``,

    dst[dst_offset + sum_k i_k * dst_strides[k]] = src[src_offset + sum_k i_k * src_strides[k]]

over the flat memory of C-contiguous arrays (strides in elements: 0 broadcasts, negative ones
walk backwards). The shapes are static, so the box is simplified when the plan is emitted:
axes of size 1 are dropped and neighbouring axes that are contiguous in both arrays merge (a
transpose of NCHW to NHWC becomes a copy of (N, HW, C) with source strides (CHW, 1, HW)). The
kernel takes up to ``RANK`` axes; further leading axes become loops of the generated code.

Two kernels: ``_rows`` copies rows of the last axis (each task walks ``rows`` rows with an
odometer, so no division per row); ``_tiles`` is for transposes, where the axis that is
contiguous in the source differs from the one contiguous in the destination: it copies
``TILE`` x ``TILE`` tiles so that reads and writes both stay within a few cache lines (larger
tiles lose to cache-set conflicts when the source's row stride is a power of two).
"""

from __future__ import annotations

import math

from numba import prange

from runtime.codegen import Expr
from runtime.kernels.base import Twin

RANK = 6  # axes the kernels take
TILE = 8  # edge of a transpose tile (8 source rows 4 KiB apart still share an L1 set)
_TASK = 16384  # elements per task of _rows
_COPIES_PER_WORK = 8  # copied elements per unit of the work PARALLEL_WORK counts (an add, a multiply-add)
NARROW = 8  # a transpose whose short contiguous axis has at most this many elements is written out


def _rows_body(src, so, ss, dst, do, ds, n, rows):
    """The copy over the box n (RANK axes, the last one innermost), ``rows`` rows per task."""
    n0, n1, n2, n3, n4, n5 = n
    total = n0 * n1 * n2 * n3 * n4
    s5, d5 = ss[5], ds[5]
    for t in prange((total + rows - 1) // rows):
        lo = t * rows
        hi = min(total, lo + rows)
        q = lo
        i4 = q % n4
        q //= n4
        i3 = q % n3
        q //= n3
        i2 = q % n2
        q //= n2
        i1 = q % n1
        i0 = q // n1
        s = so + i0 * ss[0] + i1 * ss[1] + i2 * ss[2] + i3 * ss[3] + i4 * ss[4]
        d = do + i0 * ds[0] + i1 * ds[1] + i2 * ds[2] + i3 * ds[3] + i4 * ds[4]
        for _ in range(lo, hi):
            if d5 == 1 and s5 == 1:
                out = dst[d:d + n5]
                inp = src[s:s + n5]
                for j in range(n5):
                    out[j] = inp[j]
            elif d5 == 1:
                out = dst[d:d + n5]
                for j in range(n5):
                    out[j] = src[s + j * s5]
            else:
                for j in range(n5):
                    dst[d + j * d5] = src[s + j * s5]
            # next row: the odometer over axes 4, 3, ..., 0
            i4 += 1
            s += ss[4]
            d += ds[4]
            if i4 == n4:
                i4 = 0
                i3 += 1
                s += ss[3] - n4 * ss[4]
                d += ds[3] - n4 * ds[4]
                if i3 == n3:
                    i3 = 0
                    i2 += 1
                    s += ss[2] - n3 * ss[3]
                    d += ds[2] - n3 * ds[3]
                    if i2 == n2:
                        i2 = 0
                        i1 += 1
                        s += ss[1] - n2 * ss[2]
                        d += ds[1] - n2 * ds[2]
                        if i1 == n1:
                            i1 = 0
                            s += ss[0] - n1 * ss[1]
                            d += ds[0] - n1 * ds[1]


def _tiles_body(src, so, ss, dst, do, ds, n):
    """The copy over the box n where axis 4 is contiguous in src (ss[4] == 1) and axis 5 in dst
    (ds[5] == 1): one task per (index of axes 0-3, band of TILE along axis 4), TILE x TILE tiles
    with literal bounds (LLVM unrolls them), plain loops at the ragged edges."""
    n0, n1, n2, n3, n4, n5 = n
    bands = (n4 + TILE - 1) // TILE
    s5, d4 = ss[5], ds[4]
    full5 = n5 - n5 % TILE
    for t in prange(n0 * n1 * n2 * n3 * bands):
        q = t // bands
        lo4 = (t - q * bands) * TILE
        i3 = q % n3
        q //= n3
        i2 = q % n2
        q //= n2
        i1 = q % n1
        i0 = q // n1
        s = so + i0 * ss[0] + i1 * ss[1] + i2 * ss[2] + i3 * ss[3] + lo4
        d = do + i0 * ds[0] + i1 * ds[1] + i2 * ds[2] + i3 * ds[3] + lo4 * d4
        if lo4 + TILE <= n4:
            for lo5 in range(0, full5, TILE):
                for a in range(TILE):
                    out = dst[d + a * d4 + lo5:d + a * d4 + lo5 + TILE]
                    for b in range(TILE):
                        out[b] = src[s + (lo5 + b) * s5 + a]
            rows, first5 = TILE, full5
        else:
            rows, first5 = n4 - lo4, 0
        for a in range(rows):  # the ragged column edge, or every column of the last band
            for j in range(first5, n5):
                dst[d + a * d4 + j] = src[s + j * s5 + a]


_rows = Twin(_rows_body)
_tiles = Twin(_tiles_body)


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def simplify(shape, src_strides, dst_strides) -> tuple[list[int], list[int], list[int]]:
    """The same box with axes of size 1 dropped and neighbours merged where both arrays step
    over the inner one exactly (stride of the outer = stride * size of the inner)."""
    n, s, d = [], [], []
    for size, a, b in zip(shape, src_strides, dst_strides, strict=True):
        if size == 1:
            continue
        if n and s[-1] == a * size and d[-1] == b * size:
            n[-1] *= size
            s[-1], d[-1] = a, b
        else:
            n.append(size)
            s.append(a)
            d.append(b)
    return n, s, d


def emit_copy(e, src: str, src_offset: int, src_strides, dst: str, dst_offset: int, dst_strides, shape) -> None:
    """Write the copy of the box ``shape`` from flat ``src`` to flat ``dst`` (both names of
    C-contiguous arrays) into the plan function."""
    if math.prod(shape) == 0:
        return
    n, ss, ds = simplify(tuple(shape), tuple(src_strides), tuple(dst_strides))
    # a copy only moves memory, which one core nearly saturates: threads pay off only for big ones
    work = math.prod(n) // _COPIES_PER_WORK
    sf, df = e.fresh("flat"), e.fresh("flat")
    e.line(f"{sf} = {src}.reshape(-1)")
    e.line(f"{df} = {dst}.reshape(-1)")
    so, do = Expr(str(int(src_offset))), Expr(str(int(dst_offset)))
    opened = 0
    while len(n) > RANK:  # leading axes beyond the kernel's: loops of the generated code
        (i,) = e.loops((n[0],))
        so, do = Expr(f"{so} + {i} * {ss[0]}"), Expr(f"{do} + {i} * {ds[0]}")
        n, ss, ds = n[1:], ss[1:], ds[1:]
        opened += 1
    if not n:
        e.line(f"{df}[{do}] = {sf}[{so}]")
    elif _narrow_transpose(n, ss, ds):
        _emit_narrow(e, sf, so, ss, df, do, ds, n)
    elif len(n) >= 2 and ds[-1] == 1 and ss[-1] != 1 and 1 in ss and n[-1] >= 8:
        # a transpose: the source's contiguous axis goes next to the last one, then tiles
        p = ss.index(1)
        order = [k for k in range(len(n) - 1) if k != p] + [p, len(n) - 1]
        n, ss, ds = ([v[k] for k in order] for v in (n, ss, ds))
        pad = [1] * (RANK - len(n))
        e.call(_tiles, Expr(sf), so, tuple([0] * len(pad) + ss), Expr(df), do, tuple([0] * len(pad) + ds),
               tuple(pad + n), work=work)
    else:
        pad = [1] * (RANK - len(n))
        rows = max(1, _TASK // n[-1])
        e.call(_rows, Expr(sf), so, tuple([0] * len(pad) + ss), Expr(df), do, tuple([0] * len(pad) + ds),
               tuple(pad + n), rows, work=work)
    e.end(opened)


def _narrow_transpose(n: list[int], ss: list[int], ds: list[int]) -> bool:
    """A transpose between the last axis (contiguous in dst) and an axis contiguous in src, one
    of the two at most NARROW long: the layout change of an image with few channels (NHWC to
    NCHW and back). The tiles of ``_tiles`` are mostly ragged edges there."""
    if len(n) < 2 or ds[-1] != 1 or ss[-1] == 1 or 1 not in ss:
        return False
    return min(n[-1], n[ss.index(1)]) <= NARROW


def _emit_narrow(e, sf: str, so: Expr, ss: list[int], df: str, do: Expr, ds: list[int], n: list[int]) -> None:
    """``_narrow_transpose``'s copy as literal loops in the plan function: the long axis of the
    two is the innermost loop and the short one is unrolled in its body, so every stride is a
    constant and LLVM vectorizes the loop with interleaved loads or stores (numpy's own
    transposed copy is about 3x slower on a 224x224x3 image, the tiles about 10x)."""
    last, p = len(n) - 1, ss.index(1)
    inner, short = (last, p) if n[last] >= n[p] else (p, last)
    outer = [k for k in range(len(n)) if k not in (inner, short)]
    idx = e.loops(tuple(n[k] for k in outer))
    src = " + ".join([str(so)] + [f"{i} * {ss[k]}" for i, k in zip(idx, outer)])
    dst = " + ".join([str(do)] + [f"{i} * {ds[k]}" for i, k in zip(idx, outer)])
    (j,) = e.loops((n[inner],))
    for a in range(n[short]):
        e.line(f"{df}[{dst} + {j} * {ds[inner]} + {a * ds[short]}] = {sf}[{src} + {j} * {ss[inner]} + {a * ss[short]}]")
    e.end(1 + len(outer))
