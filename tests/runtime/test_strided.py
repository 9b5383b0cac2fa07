"""The strided copies of the plan function (runtime/kernels/strided.py) against an index-by-index
numpy reference: transposes (tiled, with partial tiles), negative steps, broadcasts, boxes with
more axes than the kernels take, writes into part of a larger array, serial and parallel (the
cases of more than 8 * PARALLEL_WORK elements, with two threads)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.codegen import Emitter, Expr, function_source, load_module, module_source
from runtime.kernels.strided import RANK, c_strides, emit_copy, simplify


def reference(x, so, ss, y, do, ds, shape):
    """y with y.flat[do + i . ds] = x.flat[so + i . ss] for every index i of shape."""
    y = y.copy()
    idx = np.indices(shape).reshape(len(shape), -1)
    src = so + (np.array(ss)[:, None] * idx).sum(axis=0)
    dst = do + (np.array(ds)[:, None] * idx).sum(axis=0)
    y.reshape(-1)[dst] = x.reshape(-1)[src]
    return y


def transpose(shape, perm, dtype=np.float32):
    x = np.arange(np.prod(shape)).astype(dtype).reshape(shape)
    out = tuple(shape[p] for p in perm)
    cs = c_strides(shape)
    return x, np.zeros(out, dtype), 0, [cs[p] for p in perm], 0, c_strides(out), out


def box(x_shape, y_shape, so, ss, do, ds, shape, dtype=np.float32):
    x = np.arange(np.prod(x_shape)).astype(dtype).reshape(x_shape)
    return x, np.full(y_shape, -1, dtype), so, ss, do, ds, shape


CASES = {
    "nchw_to_nhwc_tiled": transpose((1, 64, 40, 40), (0, 2, 3, 1)),
    "nhwc_to_nchw_tiled": transpose((2, 17, 19, 33), (0, 3, 1, 2)),
    "parallel_tiles": transpose((1, 96, 81, 79), (0, 2, 3, 1)),
    "nhwc_to_nchw_narrow": transpose((2, 13, 11, 3), (0, 3, 1, 2)),
    "nchw_to_nhwc_narrow": transpose((3, 8, 9, 10), (0, 2, 3, 1), np.int16),
    "narrow_both_short": transpose((5, 7), (1, 0), np.float64),
    "narrow_offsets": box((4, 6, 3), (2, 3, 50), 3, [18, 3, 1], 7, [150, 50, 1], (2, 3, 3)),
    "parallel_rows": box((8, 300, 257), (8, 300, 300), 0, c_strides((8, 300, 257)), 40, [90000, 300, 1],
                         (8, 300, 257)),
    "matrix_partial_tiles": transpose((37, 45), (1, 0), np.int64),
    "rank5_transpose": transpose((2, 3, 4, 5, 6), (4, 2, 0, 3, 1), np.uint8),
    "reverse_slice": box((5, 7, 9), (3, 4, 5), 4 * 63 + 8, [-63, 18, -1], 0, [20, 5, 1], (3, 4, 5)),
    "broadcast_last_axis": box((3, 1), (3, 4, 5), 0, [1, 0, 0], 0, [20, 5, 1], (3, 4, 5)),
    "into_part_of_y": box((2, 3, 1), (2, 3, 5), 0, [3, 1, 1], 2, [15, 5, 1], (2, 3, 1)),
    "eight_axes": box((2, 2, 2, 2), (2, 2, 3, 2, 2, 2, 3, 2), 0, [0, 8, 0, 4, 0, 2, 0, 1],
                      0, c_strides((2, 2, 3, 2, 2, 2, 3, 2)), (2, 2, 3, 2, 2, 2, 3, 2)),
    "one_element": box((4, 4), (2,), 5, [4, 1], 1, [2, 1], (1, 1)),
    "empty": box((4, 4), (4, 4), 0, [4, 1], 0, [4, 1], (0, 4)),
}


@pytest.mark.parametrize("threads", [1, 2])
def test_copies_match_reference(threads):
    e = Emitter(threads)
    xs, ys = [], []
    for k, (x, y, so, ss, do, ds, shape) in enumerate(CASES.values()):
        emit_copy(e, Expr(f"x{k}"), so, ss, Expr(f"y{k}"), do, ds, shape)
        xs.append(x)
        ys.append(y.copy())
    params = [f"x{k}" for k in range(len(xs))] + [f"y{k}" for k in range(len(ys))]
    module, _ = load_module(module_source([function_source("run_plan", params, e.lines)], "test_strided"), e.functions)
    module.run_plan(*xs, *ys)
    for name, got, (x, y, so, ss, do, ds, shape) in zip(CASES, ys, CASES.values(), strict=True):
        np.testing.assert_array_equal(got, reference(x, so, ss, y, do, ds, shape), err_msg=name)


def test_narrow_transposes_are_literal_loops():
    """An image with 3 or 8 channels changes layout in plan code with constant strides (one
    statement per channel), no kernel call."""
    for case, channels in (("nhwc_to_nchw_narrow", 3), ("nchw_to_nhwc_narrow", 8)):
        e = Emitter(1)
        x, y, so, ss, do, ds, shape = CASES[case]
        emit_copy(e, Expr("x"), so, ss, Expr("y"), do, ds, shape)
        assert not e.functions and sum("] = flat" in line for line in e.lines) == channels, case


def test_generated_code_uses_tiles_and_loops():
    """The transpose goes through the tiled kernel; axes beyond RANK become loops of the plan."""
    e = Emitter(1)
    x, y, so, ss, do, ds, shape = CASES["nchw_to_nhwc_tiled"]
    emit_copy(e, Expr("x"), so, ss, Expr("y"), do, ds, shape)
    assert any("tiles" in line for line in e.lines)
    e = Emitter(2)
    x, y, so, ss, do, ds, shape = CASES["parallel_rows"]
    emit_copy(e, Expr("x"), so, ss, Expr("y"), do, ds, shape)
    assert any("rows_body(" in line for line in e.lines)  # the parallel version (the serial one ends in _serial)
    e = Emitter(1)
    x, y, so, ss, do, ds, shape = CASES["eight_axes"]
    assert len(simplify(shape, ss, ds)[0]) > RANK
    emit_copy(e, Expr("x"), so, ss, Expr("y"), do, ds, shape)
    assert sum(line.strip().startswith("for ") for line in e.lines) == len(simplify(shape, ss, ds)[0]) - RANK


def test_simplify_merges_contiguous_axes():
    # NCHW -> NHWC: H and W stay neighbours in both layouts
    assert simplify((1, 5, 6, 8), (240, 6, 1, 30), (240, 48, 8, 1)) == ([30, 8], [1, 30], [8, 1])
