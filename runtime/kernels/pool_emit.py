"""Windowed pooling written into the plan function as literal loops (runtime/codegen.py).

A pool of a model is small and its geometry is static, so instead of calling a kernel that
reads KH, KW, strides and pads as arguments, the plan gets loops with every one of them a
constant and the window's taps unrolled: LLVM then vectorizes the loop over output columns with
constant-stride loads (stride 1 or 2 are the common ones), and a tiny pool costs no call, view or
table set-up (QuickNet's 2x2 pools on 8x8 to 2x2 images took 3-13 us through the kernels).

Padding without branches: the output rows split into runs of consecutive rows whose window
covers the same input rows (every row in the interior; each border row on its own), and the
columns likewise. Every (row run, column run) block is one loop nest whose taps are exactly the
valid ones, so no padding value is ever read or written:

    y[oh, ow] = max over valid (ki, kj) of x[oh * sh - pt + ki * dh, ow * sw - pl + kj * dw]

for MaxPool, and for AveragePool the sum over the same taps (in the order ki, then kj, as
onnxruntime sums) divided by the block's count: the number of valid taps, or with
count_include_pad the taps inside the padded image, per axis and multiplied (``Pool._divisors``).
A window with no valid tap gives the lowest value of the dtype (max) or 0 (average).
"""

from __future__ import annotations

MAX_TAPS = 64  # larger windows go to the kernels: the unrolled body would only grow
MAX_LINES = 512  # unrolled statements per pool, over all its blocks


def runs(n_out: int, size: int, k: int, s: int, d: int, pad: int, pad_end: int) -> list[tuple[int, int, tuple, int]]:
    """(first, end, valid taps, padded count) of every run of consecutive outputs along one axis
    whose window covers the same taps: the taps inside the input, and how many fall inside
    the input with its padding."""
    out: list[tuple[int, int, tuple, int]] = []
    for o in range(n_out):
        pos = [o * s - pad + t * d for t in range(k)]
        taps = tuple(t for t, p in enumerate(pos) if 0 <= p < size)
        padded = sum(1 for p in pos if -pad <= p < size + pad_end)
        if out and out[-1][2:] == (taps, padded) and out[-1][1] == o:
            out[-1] = (out[-1][0], o + 1, taps, padded)
        else:
            out.append((o, o + 1, taps, padded))
    return out


def fits(x4, y4, k, s, d, p) -> bool:
    """Whether the unrolled form stays small enough to write out."""
    if k[0] * k[1] > MAX_TAPS:
        return False
    rows = runs(y4[2], x4[2], k[0], s[0], d[0], p[0], p[2])
    cols = runs(y4[3], x4[3], k[1], s[1], d[1], p[1], p[3])
    return sum(max(1, len(r[2]) * len(c[2])) for r in rows for c in cols) <= MAX_LINES


def emit_pool(e, x: str, y: str, x4, y4, k, s, d, p, is_max: bool, include_pad: bool, dtype: str,
              lowest: str, tasks: int = 1) -> None:
    """Write the pool of ``x`` (N, C, H, W) into ``y`` (N, C, OH, OW) as literal loops;
    ``dtype`` names the element type, ``lowest`` is the source of its lowest value; with
    ``tasks`` > 1 the loop over images and channels is split over the threads."""
    _, _, H, W = x4
    _, _, OH, OW = y4
    rows, cols, xf, yf = _flat_runs(e, x, y, (H, W), (OH, OW), k, s, d, p)
    # the max over the window's rows first, in one contiguous pass, where that saves strided
    # loads: 3x3 windows (64x112x112, stride 2: 183 us against 295 us tap by tap), not 2x2
    # ones (64x32x32: 24 us against 8 us; benchmarks/bench_float_ops.py)
    separable = [is_max and len(rtaps) * k[1] > len(rtaps) + k[1] for _, _, rtaps, _ in rows]
    vm = e.work((W,), dtype, "rowmax") if any(separable) and tasks == 1 else None
    if tasks > 1:
        nc = e.begin_parallel([xf, yf], x4[0] * x4[1], tasks, "pool")
        if any(separable):  # its own row of maxima (a workspace array is shared by the tasks)
            vm = e.fresh("rowmax")
            e.line(f"{vm} = np.empty({W}, {dtype})")
    else:
        (nc,) = e.loops((x4[0] * x4[1],))
    for (r0, r1, rtaps, rcount), sep in zip(rows, separable):
        oh = e.fresh("oh")
        e.line(f"for {oh} in range({r0}, {r1}):")
        e.indent += 1
        xr, yr = e.fresh("xr"), e.fresh("yr")
        e.line(f"{xr} = {nc} * {H * W} + {oh} * {s[0] * W} - {p[0] * W + p[1]}")
        e.line(f"{yr} = {nc} * {OH * OW} + {oh} * {OW}")
        if sep:
            (w,) = e.loops((W,))
            row = [f"{xf}[{xr} + {ki * d[0] * W + p[1]} + {w}]" for ki in rtaps]
            e.line(f"{vm}[{w}] = " + _max_of(row))
            e.end(1)
        for c0, c1, ctaps, ccount in cols:
            ow = _range(e, c0, c1)
            if sep:
                taps = [f"{vm}[{ow} * {s[1]} + {kj * d[1] - p[1]}]" for kj in ctaps]
            else:
                taps = [f"{xf}[{xr} + {ow} * {s[1]} + {ki * d[0] * W + kj * d[1]}]" for ki in rtaps for kj in ctaps]
            target = f"{yf}[{yr} + {ow}]"
            if not taps:
                e.line(f"{target} = {lowest}" if is_max else f"{target} = {dtype}(0)")
            elif is_max:
                e.line(f"{target} = " + _max_of(taps))
            else:
                count = rcount * ccount if include_pad else len(rtaps) * len(ctaps)
                v = e.fresh("v")
                e.line(f"{v} = {taps[0]}")
                for t in taps[1:]:
                    e.line(f"{v} += {t}")
                e.line(f"{target} = {v} / {dtype}({count})")
            e.end(1)
        e.end(1)
    if tasks > 1:
        e.end_parallel()
    else:
        e.end(1)


def _flat_runs(e, x: str, y: str, hw, ohw, k, s, d, p) -> tuple:
    """(row runs, column runs, flat view of x, flat view of y) of a pool of an hw image into an
    ohw one, the two views bound in the code."""
    rows = runs(ohw[0], hw[0], k[0], s[0], d[0], p[0], p[2])
    cols = runs(ohw[1], hw[1], k[1], s[1], d[1], p[1], p[3])
    xf, yf = e.fresh("xf"), e.fresh("yf")
    e.line(f"{xf} = {x}.reshape(-1)")
    e.line(f"{yf} = {y}.reshape(-1)")
    return rows, cols, xf, yf


def _max_of(terms: list[str]) -> str:
    """np.maximum over the terms as a balanced tree; np.maximum propagates NaN as onnxruntime's
    MaxPool does, and LLVM vectorizes it."""
    return _tree(terms, "np.maximum({}, {})")


def _tree(terms: list[str], pair: str) -> str:
    """The terms joined two by two with ``pair`` (a format of two operands) as a balanced tree:
    short dependency chains."""
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return pair.format(_tree(terms[:half], pair), _tree(terms[half:], pair))


def _range(e, lo: int, hi: int) -> str:
    """Open ``for ow in range(lo, hi):`` (close it with ``e.end(1)``); returns the index name."""
    i = e.fresh("ow")
    e.line(f"for {i} in range({lo}, {hi}):")
    e.indent += 1
    return i


def emit_bit_pool(e, x: str, y: str, x4, y4, k, s, d, p, inv, tasks: int = 1) -> None:
    """Write the max pool of packed ``x`` (N, H, W, words) into ``y`` (N, OH, OW, words) as
    literal loops, for values without a nonzero mask: the max of +-1 values is the AND of the
    window's bits, and on the channels flagged in ``inv`` (words) the min, their OR, which is
    the NOT of the AND of the flipped bits: ``y = inv ^ AND(x ^ inv)`` (no XOR where ``inv``
    is all zeros). The rows of the output are the loop (split over ``tasks``), the row runs
    branches in it, the column runs and the taps as in ``emit_pool``: only valid taps are read.
    The general kernel (binary_misc._bit_maxpool) reads the geometry as arguments, and its
    small tap loops of unknown count cost 4x these loops."""
    n_, h_, w_, wc = x4
    _, oh_, ow_, _ = y4
    rows, cols, xf, yf = _flat_runs(e, x, y, (h_, w_), (oh_, ow_), k, s, d, p)
    flip = e.const(inv, "inv") if inv.any() else None
    if tasks > 1:
        r = e.begin_parallel([xf, yf] + ([flip] if flip else []), n_ * oh_, tasks, "bitpool")
    else:
        (r,) = e.loops((n_ * oh_,))
    oh, xb = e.fresh("oh"), e.fresh("xb")
    e.line(f"{oh} = {r} % {oh_}")
    e.line(f"{xb} = ({r} // {oh_}) * {h_ * w_ * wc} + {oh} * {s[0] * w_ * wc} - {p[0] * w_ * wc + p[1] * wc}")
    for i, (_, r1, rtaps, _) in enumerate(rows):
        if len(rows) > 1:  # the row runs in order: a branch each
            e.line(f"{'if' if i == 0 else 'elif'} {oh} < {r1}:" if i < len(rows) - 1 else "else:")
            e.indent += 1
        for c0, c1, ctaps, _ in cols:
            ow = _range(e, c0, c1)
            q = e.loops((wc,))[0] if wc > 1 else "0"
            base = f"{xb} + {ow} * {s[1] * wc} + {q}"
            taps = [f"{xf}[{base} + {(ki * d[0] * w_ + kj * d[1]) * wc}]" for ki in rtaps for kj in ctaps]
            if flip:
                taps = [f"({t} ^ {flip}[{q}])" for t in taps]
            v = _tree(taps, "({} & {})")
            e.line(f"{yf}[{r} * {ow_ * wc} + {ow} * {wc} + {q}] = " + (f"{v} ^ {flip}[{q}]" if flip else v))
            e.end(2 if wc > 1 else 1)
        if len(rows) > 1:
            e.end(1)
    if tasks > 1:
        e.end_parallel()
    else:
        e.end(1)

