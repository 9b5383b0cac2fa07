"""Codeword and MST figures (bnnc.analysis) against slow, obvious reference implementations."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from bnnc.analysis import codeword_stats, mst_stats, mst_weight


def slow_codewords(w: np.ndarray) -> dict:
    counts = Counter(tuple(int(v) for v in w[o, i].reshape(-1)) for o in range(w.shape[0]) for i in range(w.shape[1]))
    n = sum(counts.values())
    ranked = sorted(counts.values(), reverse=True)
    return {"distinct": len(counts), "top16_share": sum(ranked[:16]) / n,
            "entropy_bits": -sum(c / n * math.log2(c / n) for c in ranked)}


def slow_mst(filters: list[tuple]) -> int:
    """Kruskal over every pair, Hamming distance counted symbol by symbol."""
    parent = list(range(len(filters)))

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    edges = sorted((sum(x != y for x, y in zip(filters[a], filters[b])), a, b)
                   for a, b in itertools.combinations(range(len(filters)), 2))
    total = 0
    for d, a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            total += d
    return total


def weights(rng, shape, ternary=False, skew=0.0):
    """±1 weights; ``skew`` > 0 copies filter 0 into the others with few flips (clustered filters)."""
    values = [-1, 0, 1] if ternary else [-1, 1]
    w = rng.choice(np.array(values, np.int8), size=shape)
    if skew:
        flips = rng.random(shape) < skew
        w = np.where(flips, w, w[:1]).astype(np.int8)
    return w


CASES = [((1, 1, 3, 3), 1, False, 0.0), ((7, 5, 3, 3), 1, False, 0.0), ((64, 65, 3, 3), 1, False, 0.1),
         ((33, 2, 5, 5), 1, False, 0.3), ((16, 8, 1, 1), 1, False, 0.0), ((12, 3, 3, 3), 4, False, 0.0),
         ((9, 4, 3, 3), 1, True, 0.0), ((24, 1, 3, 3), 24, False, 0.0)]


@pytest.mark.parametrize("shape,group,ternary,skew", CASES)
def test_codewords_match_reference(shape, group, ternary, skew):
    w = weights(np.random.default_rng(sum(shape)), shape, ternary, skew)
    fast, slow = codeword_stats(w), slow_codewords(w)
    assert fast["distinct"] == slow["distinct"]
    assert fast["slices"] == shape[0] * shape[1]
    assert fast["top16_share"] == pytest.approx(slow["top16_share"], abs=1e-12)
    assert fast["entropy_bits"] == pytest.approx(slow["entropy_bits"], abs=1e-9)
    assert fast["possible"] == (3 if ternary else 2) ** (shape[2] * shape[3])


@pytest.mark.parametrize("shape,group,ternary,skew", CASES)
def test_mst_matches_reference(shape, group, ternary, skew):
    w = weights(np.random.default_rng(sum(shape) + 1), shape, ternary, skew)
    per = shape[0] // group
    planes = (lambda v: tuple(v < 0) + tuple(v != 0)) if ternary else (lambda v: tuple(v < 0))
    flat = [planes(w[o].reshape(-1)) for o in range(shape[0])]
    slow = sum(slow_mst(flat[g * per:(g + 1) * per]) for g in range(group))
    fast = mst_stats(w, group)
    assert fast["mst_weight"] == slow
    f = int(np.prod(shape[1:])) * (2 if ternary else 1)
    assert fast["filter_bits"] == f
    assert fast["xnor_fraction"] == pytest.approx((group * f + slow) / (shape[0] * f))


def test_mst_extremes():
    rng = np.random.default_rng(3)
    same = np.repeat(weights(rng, (1, 4, 3, 3)), 10, axis=0)
    s = mst_stats(same)
    assert s["mst_weight"] == 0 and s["xnor_fraction"] == pytest.approx(1 / 10)
    # filters and their negations in a chain: each step differs in exactly one symbol
    base = weights(rng, (1, 2, 3, 3)).reshape(-1)
    chain = np.stack([np.where(np.arange(base.size) < k, -base, base) for k in range(base.size + 1)])
    assert mst_weight(np.packbits(chain < 0, axis=1)) == base.size  # rows of bytes work too
    assert codeword_stats(same)["distinct"] == len({tuple(x) for x in same[0].reshape(4, 9)})
