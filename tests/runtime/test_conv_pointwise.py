"""The pointwise float conv (runtime/kernels/conv_pointwise.py): 1x1, stride 1, no padding, read in
place; tiles of one vector of positions (of two, from x packed per tile, on AVX2), the last
P % LANES positions on tail tiles with the channels in the vectors (TR positions at a time),
channel runs over the threads.

Against numpy (the kernel alone, every activation, 1 and 2 threads, one task or a run of channels
per thread) and onnxruntime (whole models: Conv, and Conv + Relu fused by the default pipeline,
through the emitted plan at 1 and 2 threads)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime.kernels.base as base
import runtime.kernels.conv as conv
import runtime.kernels.conv_pointwise as cpw
from runtime.kernels.conv_pointwise import TR
from runtime.kernels.conv_tile import LANES
from runtime.threads import limit_threads
from tests.helpers import bnnc_run, ort_run
from tests.runtime.test_float_helpers import randn

# (N, C, H, W, M): planes of whole vectors (no tail), tails of 1, 2, TR - 1, TR and TR + 1
# positions and LANES - 1 of them, channel counts that fill no block, odd planes, batches 2 and 3;
# for the AVX2 column tiles of two vectors (conv_pointwise_pairs): planes of an odd number of
# vectors (a last tile half stored), channels ending on a tile's rows and on a whole block
SHAPES = [
    (1, 3, 5, 8, cpw.PMR // 2),
    (2, 11, 4, 8, cpw.PMR),
    (1, 5, 4, LANES // 4, 19),
    (2, 7, 1, LANES + 1, 33),
    (3, 3, 2, LANES + 1, 40),
    (1, 17, 7, 7, 4 * cpw.PMR + 3),
    (2, 9, 1, LANES + TR - 1, 2),
    (1, 4, 1, LANES + TR, cpw.PMR + 1),
    (3, 6, 1, LANES + TR + 1, 8 * cpw.PMR + 1),
    (1, 1, 1, 2 * LANES - 1, 1),
    (2, 64, 5, 5, 70),
]
ACTS = {0: lambda v: v, 1: lambda v: np.maximum(v, 0), 2: lambda v: np.where(v >= 0, v, 0.1 * v),
        3: lambda v: np.clip(v, 0.1, 0.7)}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", list(ACTS))
@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_matches_numpy(shape, kind, threads, monkeypatch):
    n, c, h, w, m = shape
    monkeypatch.setattr(base, "PARALLEL_WORK", 0)
    x = randn(n, c, h, w, salt=1)
    wt, b = randn(m, c, salt=2), randn(m, salt=3)
    plan = cpw.PointwisePlan.of((n, c, h, w), (n, m, h, w), 0)  # split whatever the work
    weights, bias = plan.pack(wt, b)
    y = np.full((n, m, h, w), np.nan, np.float32)
    with limit_threads(threads):
        plan.run(x, y, weights, bias, (kind, 0.1, 0.7), {})
    want = ACTS[kind](np.einsum("mc,nchw->nmhw", wt.astype(np.float64), x) + b[:, None, None])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_plan_splits_channel_runs_over_threads():
    plan = cpw.PointwisePlan.of((1, 64, 28, 28), (1, 128, 28, 28), 1 << 22)
    assert plan._split(1)[0] == 1 and plan._split(2)[0] == 2  # batch 1: each thread a run of channels
    assert cpw.PointwisePlan.of((4, 8, 16, 16), (4, 8, 16, 16), 1 << 22)._split(2)[0] == 1  # small: serial
    assert cpw.PointwisePlan.of((1, 8, 1, LANES - 1), (1, 8, 1, LANES - 1), 0) is None  # less than a vector: BLAS


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,relu", [((1, 24, 7, 7, 40), True), ((3, 10, 5, 9, 21), False),
                                        ((2, 16, 4, 8, 16), True)])
def test_pointwise_conv_matches_onnxruntime(shape, relu, threads, monkeypatch):
    """Conv (+ Relu, fused into bnnc.FusedConv by the pipeline) in a compiled model, the plan
    emitted, split over the threads."""
    n, c, h, w, m = shape
    monkeypatch.setattr(conv, "_SPLIT_MACS", 0)
    monkeypatch.setattr(base, "PARALLEL_WORK", 0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if relu else "y"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(nodes, "pw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, m, h, w])],
                              [numpy_helper.from_array(randn(m, c, 1, 1, salt=4), "w"),
                               numpy_helper.from_array(randn(m, salt=5), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": randn(n, c, h, w, salt=6)}
    want = ort_run(model, feeds)[0]
    got = bnnc_run(model, feeds, threads=threads)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
