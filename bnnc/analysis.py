"""Bit-pattern analysis of binary convolution weights: kernel codewords and the MST estimate.

Both read a layer's logical sign weights ``B`` of shape ``[Cout, Cin/group, kh, kw]`` with values
in {-1, +1} (ternary {-1, 0, +1}: a zero is a third symbol, see below).

Codewords. Every (cout, cin) pair of a layer holds one kh x kw slice of signs; read as a word of
kh*kw symbols it is that slice's *codeword*. "Compacting Binary Neural Networks by Sparse Kernel
Selection" (Wang et al., CVPR 2023) found the codeword counts close to a power law. Reported per
layer: the number of slices, the number of distinct codewords out of the 2^(kh*kw) possible
(3^(kh*kw) ternary), the share of slices covered by the 16 most frequent codewords, and the
entropy ``H = -sum_w p_w log2 p_w`` in bits, p_w being codeword w's share of the slices.

MST estimate ("MST-compression", Vorabbi et al.). Each output channel's filter is a word of
F = Cin/group * kh * kw symbols. With the Hamming distance d(a, b) (symbols that differ) as edge
weight, let T be a minimum spanning tree over the filters of each group (filters of different
groups read different inputs, so they are never linked). Computing channel c from its tree
parent p as ``s_c = s_p + correction over the d(c, p) taps where the filters differ`` costs
d(c, p) XNOR-popcount symbol operations; the root of each group's tree costs its full F. So

    xnor_fraction = (group * F + sum of T's edge weights) / (Cout * F)

is the share of the layer's XNOR work left (1.0: no saving; the tree's weight does not depend on
which filter is the root). Ternary weights are two bitplanes (sign, nonzero), as the kernels
run them: F counts the bits of both planes and d the bits that differ in either plane.

The fast versions pack each filter into words (``np.packbits``), take Hamming distances as the
popcount of XOR over whole rows at once, and run Prim's algorithm on the dense distance rows in
O(Cout^2) time; the tests check them against slow obvious implementations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOP = 16  # codewords counted in the "top share"


def codeword_stats(w: np.ndarray) -> dict[str, Any]:
    """Codeword distribution of the kh x kw slices of logical weights ``w`` [Cout, Cin/g, kh, kw]."""
    cout, cin, kh, kw = w.shape
    symbols = (np.asarray(w).reshape(cout * cin, kh * kw).astype(np.int64) + 1)  # {-1,0,1} -> {0,1,2}
    ternary = bool(np.any(symbols == 1))
    base = 3 if ternary else 2
    digits = symbols if ternary else symbols // 2
    codes = digits @ (base ** np.arange(kh * kw, dtype=np.int64))
    _, counts = np.unique(codes, return_counts=True)
    counts = np.sort(counts)[::-1]
    p = counts / counts.sum()
    return {
        "kernel": [int(kh), int(kw)],
        "slices": int(cout * cin),
        "distinct": int(counts.size),
        "possible": int(base ** (kh * kw)),
        "top16_share": float(counts[:TOP].sum() / counts.sum()),
        "entropy_bits": float(-(p * np.log2(p)).sum()),
    }


def _filter_rows(w: np.ndarray) -> np.ndarray:
    """Each output channel's filter as packed words; a Hamming distance is popcount of XOR."""
    flat = np.asarray(w).reshape(w.shape[0], -1)
    planes = [flat < 0]
    if np.any(flat == 0):
        planes.append(flat != 0)
    packed = np.packbits(np.concatenate(planes, axis=1), axis=1)
    pad = -packed.shape[1] % 8  # whole uint64 words: 8x fewer elements to XOR and count
    return np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)


def mst_weight(rows: np.ndarray) -> int:
    """Total edge weight of a minimum spanning tree over packed filter ``rows`` (Prim, O(C^2))."""
    c = rows.shape[0]
    if c <= 1:
        return 0
    best = np.bitwise_count(rows ^ rows[0]).sum(axis=1, dtype=np.int64)
    in_tree = np.zeros(c, bool)
    in_tree[0] = True
    best[0] = np.iinfo(np.int64).max
    total = 0
    for _ in range(c - 1):
        j = int(np.argmin(best))
        total += int(best[j])
        in_tree[j] = True
        best[j] = np.iinfo(np.int64).max
        d = np.bitwise_count(rows ^ rows[j]).sum(axis=1, dtype=np.int64)
        np.minimum(best, np.where(in_tree, best, d), out=best)
    return total


def mst_stats(w: np.ndarray, group: int = 1) -> dict[str, Any]:
    """The MST estimate of the module docstring for logical weights ``w`` [Cout, Cin/g, kh, kw]."""
    cout = w.shape[0]
    rows = _filter_rows(w)
    f = int(np.prod(w.shape[1:])) * (2 if np.any(np.asarray(w) == 0) else 1)
    per = cout // group
    tree = sum(mst_weight(rows[g * per:(g + 1) * per]) for g in range(group))
    return {
        "filters": int(cout),
        "filter_bits": f,
        "mst_weight": int(tree),
        "mean_parent_distance": float(tree / max(cout - group, 1)),
        "xnor_fraction": float((group * f + tree) / (cout * f)) if cout and f else 1.0,
    }


def analyze_conv(w: np.ndarray, group: int = 1) -> dict[str, Any]:
    """Codeword and MST figures of one binary conv layer's logical weights."""
    return {"codewords": codeword_stats(w), "mst": mst_stats(w, group)}


def rule_stats(rules: np.ndarray) -> dict[str, Any]:
    """Per-layer counts of a ``rule`` table [Cout, 5] = (lo, hi, v_below, v_mid, v_above)
    (docs/binary_ops.md): channels whose output is constant, flipped (v_below > v_above: a
    negative scale upstream), with a tie run (some reachable s gives 0), and the range of the
    thresholds ``lo`` of the non-constant channels."""
    r = np.asarray(rules, np.int64).reshape(-1, 5)
    lo, hi, vb, vm, va = r.T
    has_mid = lo <= hi
    constant = (vb == va) & (~has_mid | (vm == vb))
    ties = (vb == 0) | (va == 0) | (has_mid & (vm == 0))
    t = lo[~constant]
    return {
        "channels": int(r.shape[0]),
        "flipped": int(np.sum(vb > va)),
        "constant": int(np.sum(constant)),
        "tied": int(np.sum(ties)),
        "threshold_min": int(t.min()) if t.size else None,
        "threshold_max": int(t.max()) if t.size else None,
    }
