"""Whole float models through the default pipeline, against onnxruntime.

A small ResNet-style CNN (stem conv, BatchNorm, Relu, grouped conv, dilated conv, residual Add,
MaxPool, both AveragePool padding conventions, a Concat of two branches, GlobalAveragePool,
Flatten, Gemm) and an MLP (Gemm, MatMul, Relu, Softmax); each with batch 1 and with a dynamic
batch dimension fed a batch of 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.helpers import assert_close, bnnc_run, make_model, ort_run


def _w(r: np.random.Generator, *shape, scale: float = 1.0) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (r.standard_normal(shape) * scale / np.sqrt(fan_in)).astype(np.float32)


def resnet_like(batch) -> object:
    r = np.random.default_rng(11)
    inits = {
        "stem_w": _w(r, 8, 3, 3, 3), "stem_b": _w(r, 8),
        "bn_s": (1 + 0.2 * r.standard_normal(8)).astype(np.float32), "bn_b": _w(r, 8),
        "bn_m": _w(r, 8, scale=0.1), "bn_v": (0.5 + r.random(8)).astype(np.float32),
        "grp_w": _w(r, 8, 4, 3, 3), "grp_b": _w(r, 8),
        "dil_w": _w(r, 8, 8, 3, 3),
        "pw_w": _w(r, 4, 8, 1, 1), "pw_b": _w(r, 4),
        "fc_w": _w(r, 5, 12), "fc_b": _w(r, 5),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "stem_w", "stem_b"], ["stem"], pads=[1, 1, 1, 1], name="stem"),
        n("BatchNormalization", ["stem", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"),
        n("Relu", ["bn"], ["r1"], name="relu1"),
        n("Conv", ["r1", "grp_w", "grp_b"], ["grp"], pads=[1, 1, 1, 1], group=2, name="grouped"),
        n("Relu", ["grp"], ["r2"], name="relu2"),
        n("Conv", ["r2", "dil_w"], ["dil"], pads=[2, 2, 2, 2], dilations=[2, 2], name="dilated"),
        n("Add", ["r1", "dil"], ["res"], name="residual"),
        n("Relu", ["res"], ["r3"], name="relu3"),
        n("MaxPool", ["r3"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"),
        n("AveragePool", ["mp"], ["a0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0, name="avg0"),
        n("AveragePool", ["mp"], ["a1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1, name="avg1"),
        n("Conv", ["a1", "pw_w", "pw_b"], ["pw"], name="pointwise"),
        n("Concat", ["a0", "pw"], ["cat"], axis=1, name="concat"),
        n("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        n("Flatten", ["gap"], ["flat"], name="flatten"),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return make_model(nodes, [("x", [batch, 3, 16, 16])], [("y", [batch, 5])], inits, opset=17)


def mlp(batch) -> object:
    r = np.random.default_rng(12)
    inits = {
        "w1": _w(r, 32, 20), "b1": _w(r, 32),
        "w2": _w(r, 16, 32).T.copy(), "b2": _w(r, 16),
        "w3": _w(r, 10, 16), "b3": _w(r, 10),
    }
    n = helper.make_node
    nodes = [
        n("Gemm", ["x", "w1", "b1"], ["h1"], transB=1, name="fc1"),
        n("Relu", ["h1"], ["r1"], name="relu1"),
        n("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
        n("Add", ["m2", "b2"], ["h2"], name="bias2"),
        n("Relu", ["h2"], ["r2"], name="relu2"),
        n("Gemm", ["r2", "w3", "b3"], ["logits"], transB=1, name="fc3"),
        n("Softmax", ["logits"], ["y"], axis=-1, name="softmax"),
    ]
    return make_model(nodes, [("x", [batch, 20])], [("y", [batch, 10])], inits, opset=17)


MODELS = {"resnet_like": (resnet_like, (3, 16, 16)), "mlp": (mlp, (20,))}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("batch,feed", [(1, 1), ("N", 3)])
def test_float_model_matches_onnxruntime(name, batch, feed):
    build, sample = MODELS[name]
    model = build(batch)
    x = np.random.default_rng(13).standard_normal((feed, *sample)).astype(np.float32)
    expected = ort_run(model, {"x": x})[0]
    actual = bnnc_run(model, {"x": x})[0]
    assert actual.dtype == np.float32
    assert_close(actual, expected, rel=1e-4)
    assert not np.allclose(expected, expected[:1]) or feed == 1  # the samples really differ
