"""BinaryConv's narrow path (runtime/kernels/binary_conv_narrow.py) under every way of cutting its
work: bands of one output row, of a few rows and of whole images, more tasks than bands, its
border table with a row per output row or per row class, groups whose channels share bits words
(a word stored by one group and ORed into by the next). Same references and exactness as
tests/runtime/test_binary_conv.py, whose cases run here with the cuts forced."""

from __future__ import annotations

import numpy as np
import pytest

from bnnc import ops
from runtime.bitpack import pack_dense
from runtime.kernels import binary_conv, binary_conv_narrow, binary_conv_stage
from runtime.kernels.binary_conv_narrow import NarrowPlan
from tests.runtime import test_binary_conv as conv_tests
from tests.runtime.test_binary_helpers import packed, random_rules, run_emitted, unpacked

# (N, Cin, H, W, Cout, kh, kw, strides, pads, dilations, group)
EXTRA = {
    "group4_og16_shared_words": (2, 8, 5, 9, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 4),
    "group2_og40_word_across": (1, 8, 6, 9, 80, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "group6_og12_block_across": (1, 12, 7, 8, 72, 3, 3, (1, 1), (1, 2, 0, 1), (1, 1), 6),
    "c16_3x3_rows_of_17": (3, 16, 9, 17, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "c16_5x3_pads_above_the_image": (1, 16, 2, 5, 8, 5, 3, (1, 1), (3, 1, 3, 1), (1, 1), 1),
}


@pytest.fixture(params=[(1, 1, "rows"), (2, 3, "whole"), (3, 7, "rows"), (1 << 20, 2, "whole"), (None, None, "rows")],
                ids=lambda p: f"rows{p[0]}_tasks{p[1]}_{p[2]}_table")
def cuts(request, monkeypatch):
    """Force the narrow path (wherever it applies), its output rows per band and its tasks (None:
    its own choice), and its border table: a row per output row (``whole``) or per row class."""
    rows, tasks, table = request.param
    monkeypatch.setattr(binary_conv, "choose_narrow", lambda *a: True)
    monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", 1 << 30 if table == "whole" else 0)
    if rows is not None:
        monkeypatch.setattr(binary_conv_narrow, "band_rows", lambda og, oh, ow: min(oh, rows))
    split = NarrowPlan.split

    def forced(self, threads):
        nbands, t = split(self, threads)
        return nbands, tasks or t

    monkeypatch.setattr(NarrowPlan, "split", forced)
    for name, case in EXTRA.items():
        monkeypatch.setitem(conv_tests.CASES, name, case)
    return request.param


@pytest.mark.parametrize("case", ["c1_3x3_every_border", "c63_3x3_stride2_asym", "c65_5x5_mixed", "group2_c6",
                                  "depthwise_mult2_s2", *EXTRA])
def test_narrow_cuts_match_the_reference(case, cuts):
    for pad_value in (0, 1, -1):
        conv_tests.test_float_output(case, pad_value, "narrow")
        conv_tests.test_bits_output(case, pad_value, "narrow")


def test_narrow_border_table_counts_the_taps_inside(monkeypatch):
    """tb: for a 3x3 pad-1 layer of Cin c, an output pixel's s at count 0 is the bits of its kernel
    rows inside the input (3 c or 2 c), less c for each tap outside on the left or right, plus
    twice the -1 weights of those taps; a row per output row or per row class, the same values."""
    rng = np.random.default_rng(5)
    cin, cout, h, w_ = 16, 8, 5, 6
    vals = np.where(rng.random((cout, cin, 3, 3)) < 0.5, -1, 1).astype(np.int8)
    geom, pads = (3, 3, 1, 1, 1, 1, h, w_), (1, 1, 1, 1)
    monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", 1 << 30)
    whole = NarrowPlan(vals, 1, 1, h, w_, geom, pads, 0)
    assert whole.irun == 0 and list(whole.rcls) == list(range(h))
    expect = np.zeros((cout, h, w_), np.int64)
    for oh in range(h):
        for ow in range(w_):
            for ki in range(3):
                if not 0 <= oh - 1 + ki < h:
                    continue
                for kj in range(3):
                    inside = 0 <= ow - 1 + kj < w_
                    expect[:, oh, ow] += cin if inside else 2 * (vals[:, :, ki, kj] < 0).sum(axis=1)
    np.testing.assert_array_equal(whole.tb.reshape(cout, h, w_), expect)
    monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", 0)
    rows = NarrowPlan(vals, 1, 1, h, w_, geom, pads, 0)
    assert list(rows.rcls[1:-1]) == [-1] * (h - 2) and rows.irun >= 1
    for oh in (0, h - 1):
        np.testing.assert_array_equal(rows.tb[:, rows.rcls[oh] * w_:(rows.rcls[oh] + 1) * w_], expect[:, oh])
    inner = rows.tb[:, -rows.irun * w_:].reshape(cout, rows.irun, w_)
    np.testing.assert_array_equal(inner, np.broadcast_to(expect[:, 1:2], inner.shape))


# one group, up to 64 input channels, stride 1 along the row: the plan merges the rows in
# literal loops (runtime/kernels/narrow_emit.py); same columns as CASES
MERGE_CASES = {
    "merge_c16_3x3": (2, 16, 6, 9, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "merge_c40_3x3_spill": (1, 40, 5, 7, 8, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # tap 1's bits cross a word
    "merge_c64_5x3_dilated": (1, 64, 6, 8, 16, 5, 3, (2, 1), (2, 2, 3, 2), (1, 2), 1),
    "merge_c3_1x5_asym": (2, 3, 4, 9, 70, 1, 5, (1, 1), (0, 3, 0, 1), (1, 1), 1),
    "merge_c1_3x3_every_border": (1, 1, 4, 5, 2, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
}


@pytest.mark.parametrize("case, threads", [(c, 1) for c in MERGE_CASES] + [("merge_c16_3x3", 2)])
def test_merged_rows_emitted(case, threads, tmp_path, monkeypatch):
    """The narrow path's merged rows written as literal loops into the plan (no merge_rows call
    left in it), with every padding value (rows of the fill above and below the image, columns
    of it at the sides), inputs with zeros (the input's and its mask's rows merged; without
    zeros at run time the plan skips the mask's), the rows split over two threads: the plan's
    bits equal the reference's. (Each artifact compiles a plan: the cases are few.)"""
    monkeypatch.setattr(binary_conv, "choose_narrow", lambda *a: True)
    monkeypatch.setattr(binary_conv_narrow, "task_threads", lambda work, t: t)  # split even these small merges
    monkeypatch.setitem(conv_tests.CASES, case, MERGE_CASES[case])
    for pad_value in (0, 1, -1):
        rng, x, w = conv_tests.data(case, 11 + pad_value, True, False)
        attrs = conv_tests.conv_attrs(case, pad_value, "bits")
        s = ops.binary_conv_int(x, w, **conv_tests.ref_kwargs(attrs))
        rule = random_rules(rng, s, with_zero=False)
        xb, xm = packed(x, True)
        source: list = []
        (got,) = run_emitted("bnnc.BinaryConv", attrs, [xb, xm, pack_dense(w)[0], None, rule], {2, 3, 4},
                             tmp_path / f"m{pad_value}.bnn", threads, source=source)
        assert "narrow_merge_rows" not in source[0] and ("prange(" in source[0]) == (threads == 2)
        np.testing.assert_array_equal(unpacked(got, attrs["cout"]), ops.output_bits(s, rule), err_msg=f"pad_value {pad_value}")
