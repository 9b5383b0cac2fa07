"""Codeword and MST figures (bnnc.analysis) against slow, obvious reference implementations."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from bnnc.analysis import codeword_stats, mst_stats, mst_weight, rule_stats


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


def slow_rule_stats(rules: np.ndarray) -> dict:
    """Evaluate every rule on every reachable s and read the figures off the values."""
    lo_s, hi_s = int(rules[:, :2].min()) - 2, int(rules[:, :2].max()) + 2
    out = {"flipped": 0, "constant": 0, "tied": 0}
    thresholds = []
    for lo, hi, vb, vm, va in rules.tolist():
        v = [vb if s < lo else vm if s <= hi else va for s in range(lo_s, hi_s + 1)]
        out["constant"] += len(set(v)) == 1
        out["tied"] += 0 in v
        out["flipped"] += v[0] > v[-1]
        if len(set(v)) > 1:
            thresholds.append(lo)
    out.update(threshold_min=min(thresholds, default=None), threshold_max=max(thresholds, default=None))
    return out


def test_rule_stats_match_evaluation():
    rng = np.random.default_rng(9)
    rules = []
    for _ in range(300):
        t = int(rng.integers(-20, 20))
        v = [int(x) for x in rng.choice([-1, 0, 1], 3)]
        kind = rng.integers(3)
        if kind == 0:  # constant channel, as fold-thresholds writes it
            rules.append((21, 20, v[0], v[0], v[0]))
        elif kind == 1:  # plain threshold: empty middle run
            rules.append((t, t - 1, v[0], v[2], v[2]))
        else:
            rules.append((t, t + int(rng.integers(0, 4)), *v))
    rules = np.array(rules, np.int32)
    fast = rule_stats(rules)
    assert fast["channels"] == 300
    assert {k: fast[k] for k in slow_rule_stats(rules)} == slow_rule_stats(rules)


def test_inspect_json_reports_the_model_weights(tmp_path):
    """The figures ``bnnc inspect --json`` gives are those of the layer's original ±alpha
    weights (read back from the packed artifact), and the threshold counts those of its rule."""
    import json

    from click.testing import CliRunner

    from cli import main
    from tests.bnn_graphs import Builder
    from tests.helpers import make_model, save

    b = Builder(seed=2)
    w1 = b.pm1((12, 3, 3, 3))
    w2 = b.pm1((20, 12, 3, 3), alpha=np.linspace(0.3, 1.2, 20))
    w2[5] = w2[4] * 2  # two filters with the same signs
    h = b.op("Conv", ["x", b.const(w1, "w")], "c1", pads=[1, 1, 1, 1])
    h = b.op("Conv", [b.sign(b.bn(h, 12)), b.const(w2, "w")], "c2", pads=[1, 1, 1, 1])
    y = b.op("Conv", [b.sign(b.bn(h, 20, neg_frac=0.5)), b.const(b.pm1((4, 20, 1, 1)), "w")], "c3")
    path = save(make_model(b.nodes, [("x", [1, 3, 5, 5])], [(y, [1, 4, 5, 5])], b.inits), str(tmp_path))
    result = CliRunner().invoke(main, ["inspect", path, "--json"])
    layers = {r["name"]: r for r in json.loads(result.stdout)["layers"]}
    n1, n2, _ = [n.name for n in b.nodes if n.op_type == "Conv"]
    c2 = layers[n2]
    assert c2["mode"] == "xnor" and c2["input_shape"] == [1, 12, 5, 5] and c2["output_shape"] == [1, 20, 5, 5]
    signs = np.sign(w2).astype(np.int8)
    slow = slow_codewords(signs)
    assert c2["analysis"]["codewords"]["distinct"] == slow["distinct"]
    assert c2["analysis"]["codewords"]["entropy_bits"] == pytest.approx(slow["entropy_bits"])
    mst = slow_mst([tuple(f.reshape(-1) < 0) for f in signs])
    assert c2["analysis"]["mst"]["mst_weight"] == mst and mst < 20 * 108 // 2
    assert c2["thresholds"]["channels"] == 20 and 0 < c2["thresholds"]["flipped"] < 20
    assert layers[n1]["mode"] == "binary-weight" and layers[n1]["thresholds"] is None
