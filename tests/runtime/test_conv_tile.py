"""The register-tiled float convolution, on wide rows (runtime/kernels/conv_tile.py) and on packed
panels (runtime/kernels/conv_panel.py), against a numpy reference over awkward sizes: output
channels around the tile's row count MR (1, MR - 1, MR + 1, 2 MR + 3), rows shorter than a
vector, strides, dilation, lopsided pads, tasks that cut an image's rows (or the batch's
positions), every activation; the choice of those paths in conv.py. Dense products on the same
tiles: tests/runtime/test_dense_tiles.py."""

from __future__ import annotations

import numpy as np
import pytest

import runtime.kernels.conv_channels as cc
import runtime.kernels.conv_panel as cp
import runtime.kernels.conv_tile as ct
from runtime.kernels import KERNELS, Step
from runtime.kernels.conv_pointwise import PointwisePlan
from runtime.kernels.nn import ACTIVATIONS


def _reference(x, w, b, strides, dil, pads):
    """Zero-padded direct convolution in float64."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dil, pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, m, oh, ow)) + b.reshape(1, m, 1, 1)
    for ki in range(kh):
        for kj in range(kw):
            patch = xp[:, :, ki * dh:ki * dh + (oh - 1) * sh + 1:sh, kj * dw:kj * dw + (ow - 1) * sw + 1:sw]
            y += np.einsum("nchw,mc->nmhw", patch, w[:, :, ki, kj])
    return y


def _run(x, w, b, strides, dil, pads, kind, chunks, a0=0.0, a1=0.0, path="wide"):
    """(y, reference) through the tiles of ``path``: "wide" rows (or on the "short" tiles) with
    ``chunks`` runs of rows per image, packed "panel"s or "channels" in the vectors, with
    ``chunks`` tasks."""
    n, c = x.shape[:2]
    m, _, kh, kw = w.shape
    want = _reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), strides, dil, pads)
    oh, ow = want.shape[2:]
    offs, geo, plane = ct.geometry(c, (oh, ow), (kh, kw), strides, dil, pads)
    xq = np.zeros((n, plane + ct.NR_SHORT), np.float32)
    y = np.full(want.shape, np.nan, np.float32)
    if path == "channels":
        wp, bp = cc.pack_weights(w.reshape(m, -1), b)
        pos, ystart = cc.positions(n, m, (oh, ow), geo[3], xq.shape[1])
        cc.conv_channels(0, x, xq, wp, bp, y, offs, pos, ystart, geo, kind, a0, a1, chunks)
        return y, want
    short = path == "short"
    wp, bp = ct.pack_weights(w.reshape(m, -1), b, ct.MR_SHORT if short else ct.MR)
    if path == "panel":
        pan = np.full(cp.panel_shape(len(offs), chunks), np.nan, np.float32)
        cp.conv_panel(0, x, xq, pan, wp, bp, y, offs, cp.koffs(len(offs)), geo, kind, a0, a1)
    else:
        ct.conv_tile(0, x, xq, wp, bp, y, offs, geo, kind, a0, a1, chunks, short)
    return y, want


CASES = {  # x NCHW, (M, kh, kw), strides, dilations, pads (top, left, bottom, right)
    "stem_s2": ((1, 3, 30, 27), (ct.MR + 1, 7, 7), (2, 2), (1, 1), (3, 3, 3, 3)),
    "rows_of_whole_tiles": ((2, 3, 5, 2 * ct.NR), (ct.MR, 3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    "one_channel_out": ((2, 4, 9, 40), (1, 3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    "mr_minus_one": ((1, 5, 6, 5), (ct.MR - 1, 3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    "short_rows": ((3, 2, 7, 3), (2 * ct.MR + 3, 3, 2), (1, 1), (1, 1), (1, 0, 1, 0)),
    "dilated_lopsided_s3": ((1, 3, 25, 23), (5, 3, 3), (3, 2), (2, 3), (2, 0, 1, 4)),
    "valid_5x5_k1": ((4, 1, 28, 28), (ct.MR, 5, 5), (1, 1), (1, 1), (0, 0, 0, 0)),
    "pointwise_s2": ((1, 9, 13, 12), (ct.MR * 2, 1, 1), (2, 2), (1, 1), (0, 0, 0, 0)),
    "pointwise_s3_padded": ((2, 5, 14, 11), (3, 1, 1), (3, 2), (1, 1), (1, 2, 2, 1)),
    # rows of 2 LANES - 2 outputs, 6 wide columns: the second vector of a row ends in the wide
    # columns and is stored whole, its last lanes on the next row (overwritten later), except in
    # a task's last row (chunks = 3 cuts the 5 rows 2, 2, 1)
    "spill_into_next_row": ((2, 3, 11, 2 * ct.LANES + 4), (ct.MR + 1, 7, 7), (1, 1), (1, 1), (0, 0, 0, 0)),
}


PATHS = ["wide", "short", "panel", "channels"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_tiles_match_reference(case, chunks, path):
    xs, (m, kh, kw), strides, dil, pads = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((m, xs[1], kh, kw)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    y, want = _run(x, w, b, strides, dil, pads, 0, chunks, path=path)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a])
def test_tiles_apply_the_activation(act, path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 10, 37)).astype(np.float32)
    w = rng.standard_normal((ct.MR + 2, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(ct.MR + 2).astype(np.float32)
    kind = ACTIVATIONS[act][0]
    y, want = _run(x, w, b, (1, 1), (1, 1), (1, 1, 1, 1), kind, 2, -0.5, 0.7, path=path)
    f = {1: lambda v: np.maximum(v, 0), 2: lambda v: np.where(v >= 0, v, -0.5 * v), 3: lambda v: np.clip(v, -0.5, 0.7),
         4: lambda v: 1 / (1 + np.exp(-v)), 5: np.tanh, 6: lambda v: np.clip(-0.5 * v + 0.7, 0, 1)}[kind]
    np.testing.assert_allclose(y, f(want), rtol=1e-5, atol=1e-5)


def _conv_kernel(x_shape, w_shape, **attrs):
    oh = x_shape[2] + sum(attrs.get("pads", [0] * 4)[::2]) - w_shape[2]
    ow = x_shape[3] + sum(attrs.get("pads", [0] * 4)[1::2]) - w_shape[3]
    s = attrs.get("strides", [1, 1])
    y = (x_shape[0], w_shape[0], oh // s[0] + 1, ow // s[1] + 1)
    step = Step(name="c", op="Conv", attrs=attrs, in_shapes=[x_shape, w_shape], in_dtypes=["float32"] * 2,
                out_shapes=[y], out_dtypes=["float32"], consts=[None, np.zeros(w_shape, np.float32)])
    return KERNELS["Conv"](step)


def test_conv_takes_tiles_where_they_waste_little():
    stem = _conv_kernel((1, 3, 224, 224), (64, 3, 7, 7), strides=[2, 2], pads=[3, 3, 3, 3])
    assert stem.tiles is not None
    assert isinstance(_conv_kernel((1, 64, 28, 28), (128, 64, 1, 1)).tiles, PointwisePlan)  # reads x in place
    assert _conv_kernel((1, 64, 1, ct.LANES - 1), (128, 64, 1, 1)).tiles is None  # less than a vector: BLAS
    assert _conv_kernel((8, 32, 32, 32), (64, 32, 3, 3), pads=[1, 1, 1, 1]).tiles.kind == "wide"  # rows of whole tiles
    # wide rows: a fifth of the plane is wide columns; channel tiles waste nothing and, with
    # K = 1152, pay little for their scattered stores; a 5x5 conv of one channel (rows of 24 of 28
    # columns) packs panels where a wide tile is 32 positions (AVX-512); AVX2's tiles of 24 waste
    # as little on the wide rows (both ran at 0.85x onnxruntime there, bench_float_conv.py)
    assert _conv_kernel((8, 128, 8, 8), (128, 128, 3, 3), pads=[1, 1, 1, 1]).tiles.kind == "channels"
    assert _conv_kernel((8, 1, 28, 28), (64, 1, 5, 5)).tiles.kind in (("panel",) if ct.NR > 24 else ("panel", "wide"))
    xnor_stem = _conv_kernel((1, 3, 224, 224), (12, 3, 11, 11), strides=[4, 4], pads=[3, 3, 4, 4]).tiles
    assert xnor_stem.short == (12 % ct.MR_SHORT == 0 and 12 % ct.MR != 0)  # 12 channels: no padded block
    assert cc.cost(8, 32 * 32, 64, 288) == float("inf")  # scatters a 4 KiB plane apart
    assert ct.waste(112, 112, 115) < 0.05
    assert cp.waste(16 * cp.NR) == 0.0 and cp.waste(cp.NR + 1) > 0.4


@pytest.mark.parametrize("path", ["panel", "channels"])
def test_rows_of_one_position(path):
    """Output planes one column wide (every panel copy a run of one, spilling into the next run),
    positions that do not fill the last tile, channels that do not fill a channel tile."""
    rng = np.random.default_rng(11)
    m = cc.NC + 3
    x = rng.standard_normal((3, 4, 9, 1)).astype(np.float32)
    w = rng.standard_normal((m, 4, 3, 1)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    y, want = _run(x, w, b, (1, 1), (1, 1), (1, 0, 1, 0), 1, 2, path=path)
    np.testing.assert_allclose(y, np.maximum(want, 0), rtol=1e-5, atol=1e-5 * np.abs(want).max())

