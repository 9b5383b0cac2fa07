"""Float products split over threads (runtime/kernels/dense.py, ``Product.split``): a product of
few rows whose weights are large is cut into bands of columns, one per thread, and still matches
onnxruntime, in the emitted plan and step by step."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.kernels.dense import _SPLIT_BYTES, Product
from tests.helpers import assert_close, bnnc_run, ort_run


def test_split_by_columns_when_weights_are_large():
    """A 1 x 512 by 512 x 1000 product (2 MB of weights, 0.5 M multiply-adds) is split over the
    threads by columns; a small one and any product with one thread stay whole."""
    big = Product((1, 512), (512, 1000), (1, 1000), np.float32)
    assert 512 * 1000 * 4 >= _SPLIT_BYTES
    assert big.split(2) == (2, False)
    assert big.split(1) == (1, False)
    big.use_tiles(np.zeros((512, 1000), np.float32), None)  # the one-row tile splits its columns alike
    assert big._tile_tasks(2) == 2 and big._tile_tasks(1) == 1
    assert big.work(2) > 0 and big.work(1) == 0
    small = Product((1, 64), (64, 100), (1, 100), np.float32)
    assert small.split(2) == (1, False)
    narrow = Product((1, 4096), (4096, 70), (1, 70), np.float32)  # 1.1 MB, but 70 columns: one band
    assert narrow.split(2)[0] == 2 and Product((1, 8192), (8192, 40), (1, 40), np.float32).split(4)[0] == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_gemm_matches_onnxruntime(threads):
    """Gemm (transB, bias) + Relu, 1 x 512 -> 1000, and a MatMul of the same size, on 1-3 threads."""
    rng = np.random.default_rng(threads)
    w = rng.standard_normal((1000, 512)).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"]),
             helper.make_node("MatMul", ["x", "wt"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1000])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(np.ascontiguousarray(w.T), "wt")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 512)).astype(np.float32)
    want = ort_run(model, {"x": x})
    got = bnnc_run(model, {"x": x}, threads=threads)
    for g, e in zip(got, want):
        assert_close(g, e)
