"""The small binary MLP the deploy and compile-cache tests run in fresh processes."""

import numpy as np
import onnx

from tests.bnn_graphs import Builder


def binary_mlp() -> onnx.ModelProto:
    """x[2, 40] -> Sign -> +-1 MatMul (40 -> 24) -> BatchNorm -> Sign -> +-1 MatMul (24 -> 5)."""
    b = Builder(seed=11)
    h = b.op("MatMul", [b.sign("x"), b.const(b.pm1((40, 24)), "w1")])
    h = b.bn(b.op("Reshape", [h, b.const(np.array([2, 24, 1, 1], np.int64))]), 24)
    h = b.op("Reshape", [b.sign(h), b.const(np.array([2, 24], np.int64))])
    y = b.op("MatMul", [h, b.const(b.pm1((24, 5)), "w2")], "y")
    return b.model([("x", [2, 40])], [(y, [2, 5])])
