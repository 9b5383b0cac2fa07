"""Ternary BinaryConv on the panel path (binary_conv_panel.py with the masked tile of
binary_tile.py): weights in {-1, 0, +1} x activations with and without exact zeros x zero and
+-1 padding x strides x 32, 64 and 96 input channels (half a word, one word, a word and a half
per tap), bit-exact against the numpy reference, then whole graphs against onnxruntime."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

import bnnc
from bnnc import ops
from bnnc.layers import LAYERS_KEY
from bnnc.onnxrt import session
from bnnc.verify import verify
from runtime import InferenceSession
from runtime.bitpack import tail_mask
from runtime.kernels import binary_conv
from tests.bnn_graphs import Builder
from tests.helpers import save
from tests.runtime.test_binary_conv import run_conv
from tests.runtime.test_binary_helpers import random_rules, signs, unpacked

# (pads [t, l, b, r], strides): none, every border, asymmetric and wider than the kernel's reach
GEOMETRY = [((0, 0, 0, 0), (1, 1)), ((1, 1, 1, 1), (1, 1)), ((1, 1, 1, 1), (2, 2)), ((2, 0, 1, 2), (1, 2))]


@pytest.fixture
def panel_calls(monkeypatch):
    """Count the calls of the panel kernel, so a case cannot pass on another path."""
    calls = []
    real = binary_conv.panel_conv

    def counted(work, *args):
        calls.append(args[8])  # wmasked: the tile counted through the weight mask
        return real(work, *args)

    monkeypatch.setattr(binary_conv, "panel_conv", counted)
    return calls


def ternary(rng: np.random.Generator, shape) -> np.ndarray:
    """{-1, 0, +1} weights, about a third zeros, with output channel 1 all zeros and tap 0 of
    output channel 2 all zeros (its s has no contribution from that tap)."""
    w = signs(rng, shape, zeros=True)
    w[1] = 0
    w[2, :, 0, 0] = 0
    return w


@pytest.mark.parametrize("cin", [32, 64, 96])
@pytest.mark.parametrize("pads, strides", GEOMETRY)
def test_ternary_panel_matches_the_reference(cin, pads, strides, panel_calls):
    rng = np.random.default_rng(cin + 10 * pads[0] + strides[1])
    n, h, w_, cout = 2, 9, 11, 70
    wts = ternary(rng, (cout, cin, 3, 3))
    for xzeros in (False, True):
        x = signs(rng, (n, cin, h, w_), zeros=xzeros)
        for pad_value in (0, 1, -1):
            attrs = dict(kernel_shape=[3, 3], strides=list(strides), pads=list(pads), dilations=[1, 1], group=1, cin=cin,
                         cout=cout, pad_value=pad_value, macs=0)
            kw = dict(strides=strides, pads=pads, pad_value=pad_value)
            s = ops.binary_conv_int(x, wts, **kw)
            what = f"activation zeros {xzeros}, pad_value {pad_value}"
            scale, bias = rng.standard_normal((2, cout)).astype(np.float32)
            (y,) = run_conv(dict(attrs, output="float"), x, wts, True, True, [scale, bias])
            np.testing.assert_array_equal(y, ops.binary_conv(x, wts, scale, bias, **kw), err_msg=what)
            rule = random_rules(rng, s, with_zero=True)
            yb, ym = run_conv(dict(attrs, output="bits", out_mask=1), x, wts, True, True, [rule], n_outputs=2)
            np.testing.assert_array_equal(unpacked(yb, cout, ym), ops.output_bits(s, rule), err_msg=what)
            assert not (yb[..., -1] & ~tail_mask(cout)[-1]).any()
    assert panel_calls and all(panel_calls)


def test_ternary_without_activation_mask_input(panel_calls):
    """A ternary layer whose input has no nonzero mask (+-1 activations only)."""
    rng = np.random.default_rng(5)
    x, wts = signs(rng, (1, 96, 8, 8)), ternary(rng, (64, 96, 3, 3))
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], cin=96, cout=64, output="float")
    scale, bias = np.ones(64, np.float32), np.zeros(64, np.float32)
    (y,) = run_conv(attrs, x, wts, False, True, [scale, bias])
    np.testing.assert_array_equal(y, ops.binary_conv_int(x, wts, pads=(1, 1, 1, 1)).astype(np.float32))
    assert panel_calls == [True]


def _check_against_onnxruntime(model, x) -> None:
    """Every binarized tensor bit-exact (``bnnc verify``: onnxruntime beside bnnc's kernels run
    step by step), then the emitted plan's output, and both ternary layers on the panel path."""
    with tempfile.TemporaryDirectory() as d:
        path = save(model, d)
        report = verify(path, {"x": x})
        res = bnnc.compile_model(path, os.path.join(d, "m.bnn"), input_shapes={"x": list(x.shape)})
        sess = InferenceSession(os.path.join(d, "m.bnn"))
        (got,) = sess.run(None, {"x": x})
    assert [r["mode"] for r in json.loads(res.manifest["metadata"][LAYERS_KEY])] == ["ternary", "ternary"]
    assert report.layers, "no binarized tensor was compared"
    for lay in report.layers:
        assert lay.differing == 0, f"{lay.tensor}: {lay.differing} of {lay.bits} bits differ"
    for name, o in report.outputs.items():
        assert o["max_abs_error"] <= 1e-5 * max(1.0, o["limit"] / 1e-3), (name, o)
    (want,) = session(model).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    panels = [k for k in sess._kernels if isinstance(k, binary_conv.BinaryConv) and k.panel is not None and k.panel[-1]]
    assert len(panels) == 2


@pytest.mark.parametrize("cin", [32, 64, 96])
@pytest.mark.parametrize("pads, strides", [((1, 1, 1, 1), (1, 1)), ((0, 1, 2, 1), (2, 1))])
def test_ternary_layers_match_onnxruntime(cin, pads, strides):
    """Sign of an input with exact zeros (a masked activation) -> ternary conv -> BatchNorm ->
    Sign (no zeros) -> ternary conv with a float output: bit-exact against onnxruntime."""
    b = Builder(cin + pads[0])
    w1 = b.pm1((cin, cin, 3, 3))
    w1[b.rng.random(w1.shape) < 0.3] = 0.0
    w2 = b.pm1((40, cin, 3, 3))
    w2[b.rng.random(w2.shape) < 0.4] = 0.0
    y = b.conv(b.sign("x"), w1 * 0.25, pads=list(pads), strides=list(strides))
    z = b.conv(b.sign(b.bn(y, cin)), w2 * 0.5, pads=[1, 1, 1, 1])
    shape = [1, cin, 10, 12]
    x = np.random.default_rng(cin).standard_normal(shape).astype(np.float32)
    x[np.random.default_rng(cin + 1).random(shape) < 0.2] = 0.0
    _check_against_onnxruntime(b.model([("x", shape)], [(z, None)]), x)
