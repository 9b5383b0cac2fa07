"""Every path of the float Conv, pool and matmul kernels against onnxruntime, and the thread
control of the runtime (runtime.threads).

The kernels pick a path from the planned shapes (scalar loops for tiny planes, serial or
parallel Numba, the GEMM conv's way of building its patch matrix, its bands and whether they are
spread over threads); the thresholds are module constants, patched here so that small, fast
cases take every path.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import runtime.kernels.base as base
import runtime.kernels.conv as conv
import runtime.kernels.conv_gemm as conv_gemm
import runtime.kernels.dense as dense
import runtime.kernels.nn as nn
import runtime.kernels.pool as pool
import runtime.threads as threads
from bnnc.ir import name_nodes
from bnnc.ir_convert import from_proto
from bnnc.lower import lower
from runtime.artifact import write_artifact
from runtime.errors import BnncError
from runtime.session import InferenceSession, _check_threads
from tests.helpers import ort_run
from tests.runtime.test_float_helpers import build, check, compare, randn

# name -> module constants (of conv.py or conv_gemm.py) that force the path; the GEMM_PATHS
# matter to the cases that take the GEMM path only
G = conv_gemm
CONV_PATHS = {
    "default": {},
    "tiny": {"_TINY_PLANE": 10_000},
    "parallel": {"PARALLEL_WORK": 0, "_TINY_PLANE": 0},
    "serial": {"PARALLEL_WORK": 1 << 40, "_TINY_PLANE": 0},
}
ROWS = {"_SPLIT_MACS": 0, "_BAND_BYTES": 1, "_MIN_COLS": 1, "_TILE_WASTE": -1.0}  # bands of one row, over the threads
GEMM_PATHS = {
    "row_bands": ROWS,
    "image_bands": {"_SPLIT_MACS": 0, "_BAND_BYTES": 1 << 30, "_TILE_WASTE": -1.0},
    "narrow_row_bands": {"_MODES": (G.NARROW,), **ROWS},
    "wide_row_bands": {"_MODES": (G.WIDE,), "_MAX_WASTE": 1e9, **ROWS},
    "wide_image_bands": {"_MODES": (G.WIDE,), "_MAX_WASTE": 1e9, "_BAND_BYTES": 1 << 30, "_TILE_WASTE": -1.0},
    "shift_row_bands": {"_MODES": (G.SHIFT, G.NARROW), **ROWS},
}
# the register tiles for every float32 conv of one group, on wide rows (conv_tile.py: one task
# per image, and each image's rows cut into runs over the threads), on packed panels
# (conv_panel.py: the batch's position tiles over the threads) and with channels in the vectors
# (conv_channels.py: one task); test_conv_tile.py runs each layout with one task and several
TILE_PATHS = {
    "tiles": {"_TILE_WASTE": 1e9, "_TILE_KINDS": ("wide",), "PARALLEL_WORK": 1 << 40},
    "tiles_row_runs": {"_TILE_WASTE": 1e9, "_TILE_KINDS": ("wide",), "PARALLEL_WORK": 0, "_SPLIT_MACS": 0},
    "panel_tasks": {"_TILE_WASTE": 1e9, "_TILE_KINDS": ("panel",), "PARALLEL_WORK": 0, "_SPLIT_MACS": 0},
    "channels": {"_TILE_WASTE": 1e9, "_TILE_KINDS": ("channels",), "PARALLEL_WORK": 1 << 40},
}

# (input NCHW, weight MCkk, attributes): the GEMM path's four ways to build the patch matrix
# (pointwise, shifted planes, wide rows of stride phases, narrow rows), strides 1, 2, 3 and 4
# (each with its own phase-split loop), "same" convs with dilation and lopsided pads, several
# images, groups, depthwise, odd sizes
CONVS = {
    "stem_s4_k11": ((1, 3, 23, 21), (5, 3, 11, 11), dict(strides=[4, 4], pads=[3, 3, 4, 4])),
    "stem_s2_k7": ((2, 3, 17, 15), (6, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    "s3_dilated": ((1, 4, 16, 14), (5, 4, 3, 3), dict(strides=[3, 3], dilations=[2, 1], pads=[2, 1, 0, 2])),
    "pointwise": ((2, 7, 6, 5), (9, 7, 1, 1), {}),
    "pointwise_s2": ((1, 7, 9, 8), (9, 7, 1, 1), dict(strides=[2, 2])),
    "pointwise_whole_tiles": ((3, 5, 8, 12), (11, 5, 1, 1), {}),  # 96 positions: whole vectors, read in place
    "pointwise_small_plane": ((2, 7, 3, 4), (9, 7, 1, 1), {}),  # 12 positions: less than a vector, BLAS
    "same_3x3_batch3": ((3, 4, 5, 6), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "same_dilated_lopsided": ((2, 3, 9, 8), (5, 3, 3, 3), dict(dilations=[2, 2], pads=[1, 0, 3, 4])),
    "same_kernel_wider_than_image": ((1, 2, 4, 2), (3, 2, 3, 5), dict(pads=[1, 2, 1, 2])),
    "valid_5x5": ((2, 1, 11, 10), (4, 1, 5, 5), {}),
    "3x3_small_image": ((1, 5, 4, 3), (6, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
    "groups2": ((1, 6, 9, 8), (8, 3, 3, 3), dict(group=2, pads=[1, 0, 1, 2], strides=[2, 1])),
    "depthwise_s2": ((2, 6, 11, 9), (6, 1, 3, 3), dict(group=6, strides=[2, 2], pads=[1, 1, 1, 1])),
    "depthwise_mult_dil": ((1, 3, 10, 10), (6, 1, 5, 5), dict(group=3, dilations=[2, 1], pads=[4, 2, 4, 2])),
    "depthwise_1x1_image": ((1, 5, 1, 1), (5, 1, 3, 3), dict(group=5, strides=[2, 2], pads=[1, 1, 1, 1])),
    "grouped_pointwise": ((1, 8, 5, 6), (4, 2, 1, 1), dict(group=4)),
}

POOL_PATHS = {
    "default": {},
    "direct_serial": {"_TINY_WORK": 1 << 40, "PARALLEL_WORK": 1 << 40},
    "direct_parallel": {"_TINY_WORK": 1 << 40, "PARALLEL_WORK": 0},
    "rows_serial": {"_TINY_WORK": 0, "PARALLEL_WORK": 1 << 40},
    "rows_parallel": {"_TINY_WORK": 0, "PARALLEL_WORK": 0},
}

POOLS = {
    "3x3_s2_pad1": ((1, 3, 13, 12), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "2x2_s1": ((2, 4, 6, 7), dict(kernel_shape=[2, 2])),
    "3x3_s4_ceil": ((1, 2, 13, 14), dict(kernel_shape=[3, 3], strides=[4, 4], pads=[1, 1, 0, 0], ceil_mode=1)),
    "dilated_s3": ((1, 3, 14, 16), dict(kernel_shape=[2, 3], strides=[3, 3], dilations=[2, 2], pads=[1, 1, 1, 1])),
    "1x1": ((1, 5, 1, 1), dict(kernel_shape=[1, 1])),
    "2x2_s2_tiles_odd_width": ((2, 3, 8, 9), dict(kernel_shape=[2, 2], strides=[2, 2])),
    "3x2_tiles": ((1, 4, 9, 8), dict(kernel_shape=[3, 2], strides=[3, 2])),
    "2x2_s2_ceil_partial": ((1, 3, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
}


@pytest.fixture
def patch(monkeypatch):
    def apply(module, values: dict) -> None:
        for name, value in values.items():
            # PARALLEL_WORK is the one threshold every Twin reads (runtime/kernels/base.py)
            monkeypatch.setattr(base if name == "PARALLEL_WORK" else module, name, value)

    return apply


GEMM_CASES = [k for k in CONVS if not k.startswith(("depthwise", "group"))]


@pytest.mark.parametrize("case,path", [(c, p) for c in CONVS for p in CONV_PATHS] +
                         [(c, p) for c in GEMM_CASES for p in [*GEMM_PATHS, *TILE_PATHS]])
def test_conv_paths(case, path, patch):
    values = {**CONV_PATHS, **GEMM_PATHS, **TILE_PATHS}[path]
    patch(conv_gemm, {k: v for k, v in values.items() if hasattr(conv_gemm, k)})
    patch(conv, {k: v for k, v in values.items() if not hasattr(conv_gemm, k)})
    xs, ws, attrs = CONVS[case]
    inits = {"w": randn(*ws, salt=1) * 0.3, "b": randn(ws[0], salt=2)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])]
    check(nodes, {"x": randn(*xs)}, inits)


@pytest.mark.parametrize("path", list(POOL_PATHS))
@pytest.mark.parametrize("case", list(POOLS))
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_paths(op, case, path, patch):
    patch(pool, POOL_PATHS[path])
    shape, attrs = POOLS[case]
    x = randn(*shape)
    x.reshape(-1)[::5] = -50.0
    opset = 19 if "dilations" in attrs else 17
    check(helper.make_node(op, ["x"], ["y"], **attrs), {"x": x}, opset=opset)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool_paths(op, parallel, patch):
    patch(pool, {"PARALLEL_WORK": 0 if parallel else 1 << 40})
    check(helper.make_node(op, ["x"], ["y"]), {"x": randn(2, 5, 7, 9) - 2.0})


@pytest.mark.parametrize("parallel", [False, True])
def test_elementwise_activation_and_batchnorm_paths(parallel, patch):
    patch(nn, {"PARALLEL_WORK": 0 if parallel else 1 << 40})
    c = 5
    inits = {"s": randn(c, salt=1), "b": randn(c, salt=2), "m": randn(c, salt=3), "v": np.abs(randn(c, salt=4)) + 0.1}
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["t"]),
             helper.make_node("Sigmoid", ["t"], ["y"])]
    check(nodes, {"x": randn(2, c, 6, 7)}, inits)


@pytest.mark.parametrize("shapes", [((37, 20), (20, 9)), ((3, 20), (20, 41)), ((2, 5, 20), (20, 9))])
def test_matmul_split_over_threads(shapes, patch):
    patch(dense, {"_SPLIT_MACS": 0})
    a, b = randn(*shapes[0]), randn(*shapes[1], salt=1)
    check(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a}, {"b": b})
    check(helper.make_node("Gemm", ["a", "b"], ["y"], alpha=0.5), {"a": a.reshape(-1, 20)}, {"b": b})


def test_limit_threads_bounds_blas_and_restores_it():
    libs = threads.blas_libraries()
    if not libs:
        pytest.skip("no OpenBLAS found in this process")
    setter, getter = libs[0]
    setter(2)
    with threads.limit_threads(1):
        assert getter() == 1
        with threads.limit_threads(1):  # nested (or concurrent) inferences
            assert getter() == 1
        assert getter() == 1
    assert getter() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(BnncError, match="threads must be a positive integer"):
        _check_threads(bad)


def test_thread_count_is_capped_at_the_pool_size():
    assert _check_threads(10_000) == threads.max_threads()


@pytest.mark.parametrize("op, calls_blas", [("MatMul", True), ("Add", False)])
def test_a_plan_limits_blas_threads_only_when_it_calls_blas(op, calls_blas, monkeypatch, tmp_path):
    """The emitted plan of a product of two inputs calls BLAS (runtime/blas.py): its inference
    sets BLAS to one thread and restores it; a plan that never calls BLAS leaves it alone."""
    feeds = {"a": randn(48, 40), "b": randn(40, 48, salt=1) if op == "MatMul" else randn(48, 40, salt=1)}
    model = build([helper.make_node(op, ["a", "b"], ["y"])], feeds)
    path = str(tmp_path / "m.bnn")
    graph = from_proto(model)
    name_nodes(graph.graph)
    write_artifact(path, *lower(graph, producer="test"))
    sess = InferenceSession(path, threads=1, plan="emitted")
    calls = []
    counts = [2]
    monkeypatch.setattr(threads, "blas_libraries", lambda: [(lambda n: (calls.append(n), counts.append(n)),
                                                           lambda: counts[-1])])
    (y,) = sess.run(None, feeds)
    compare([y], ort_run(model, feeds))
    assert calls == ([1, 2] if calls_blas else []), calls
