"""bnnc.BinaryConv kernel against the numpy reference (bnnc.ops), bit-exact, at awkward sizes."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from onnx import helper

from bnnc import ops
from bnnc.ir import BNNC_DOMAIN
from bnnc.ir_convert import from_proto
from runtime.bitpack import pack_dense, tail_mask
from runtime.errors import BnncError
from runtime.kernels import binary_conv
from tests.helpers import make_model, run_graph
from tests.runtime.test_binary_helpers import packed, random_rules, run_step, signs, unpacked

# name: (N, Cin, H, W, Cout, kh, kw, strides, pads [t, l, b, r], dilations, group)
CASES = {
    "K1_1x1": (1, 1, 3, 4, 2, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "K63_3x3_c7": (1, 7, 5, 5, 63, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "K64_1x1": (2, 64, 3, 3, 65, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "K65_1x1": (1, 65, 4, 3, 64, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "K130_1x1_stride2": (1, 130, 5, 6, 3, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "c1_3x3_every_border": (1, 1, 4, 5, 1, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "c3_5x5_pad2_small_image": (1, 3, 3, 3, 5, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),
    "c63_3x3_stride2_asym": (1, 63, 7, 6, 130, 3, 3, (2, 2), (1, 0, 2, 1), (1, 1), 1),
    "c64_3x3_dilation2": (1, 64, 7, 8, 64, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "c65_5x5_mixed": (2, 65, 6, 7, 63, 5, 5, (1, 2), (0, 2, 1, 0), (1, 2), 1),
    "c130_3x3_asym": (1, 130, 4, 5, 130, 3, 3, (1, 1), (0, 2, 1, 0), (1, 1), 1),
    "group2_c6": (1, 6, 5, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "group2_c130_unaligned": (1, 130, 4, 4, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise_c65": (1, 65, 5, 4, 65, 3, 3, (1, 1), (1, 0, 1, 2), (1, 1), 65),
    "depthwise_mult2_s2": (1, 3, 7, 7, 6, 5, 5, (2, 2), (2, 2, 2, 2), (1, 1), 3),
}

# (activation mask, weight mask, zeros among the activations): a mask with no zero to mark is
# dropped at run time, so that case takes the unmasked paths
MASKS = [(False, False, False), (True, False, True), (False, True, False), (True, True, True), (True, False, False)]


@pytest.fixture(params=["general", "narrow"])
def path(request, monkeypatch):
    """Force BinaryConv's general kernel or, wherever it applies, the narrow one."""
    monkeypatch.setattr(binary_conv, "choose_narrow", lambda *a: request.param == "narrow")
    return request.param


def conv_attrs(case, pad_value, output, out_mask=0):
    n, cin, h, w, cout, kh, kw, st, pads, dil, g = CASES[case]
    return dict(kernel_shape=[kh, kw], strides=list(st), pads=list(pads), dilations=list(dil), group=g,
                cin=cin, cout=cout, pad_value=pad_value, output=output, out_mask=out_mask,
                macs=0)


def ref_kwargs(attrs):
    return dict(strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"],
                group=attrs["group"], pad_value=attrs["pad_value"])


def data(case, seed, xzeros, wmask):
    n, cin, h, w, cout, kh, kw, *_, g = CASES[case]
    rng = np.random.default_rng(seed)
    return rng, signs(rng, (n, cin, h, w), xzeros), signs(rng, (cout, cin // g, kh, kw), wmask)


def run_conv(attrs, x, w, xmask, wmask, tail, n_outputs=1):
    xb, xm = packed(x, xmask)
    wb, wm = pack_dense(w, with_mask=wmask)
    return run_step("bnnc.BinaryConv", attrs, [xb, xm, wb, wm, *tail], {2, 3, 4, 5}, n_outputs=n_outputs)


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("case", list(CASES))
def test_float_output(case, pad_value, path):
    for i, (xmask, wmask, xzeros) in enumerate(MASKS):
        # the float output also binarized (a fused Binarize), with each value at 0
        bits_zero = [None, 1, -1, 0, 0][i]
        attrs = conv_attrs(case, pad_value, "float")
        if bits_zero is not None:
            attrs["bits_zero"] = bits_zero
        rng, x, w = data(case, 100 + i, xzeros, wmask)
        cout = attrs["cout"]
        scale = rng.standard_normal(cout).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        scale[0] = bias[0] = 0  # channel 0 is exactly 0: the binarized output's zero case
        # every other case adds a residual input R (a folded shortcut Add)
        res = None if i % 2 else rng.standard_normal(ops.binary_conv_int(x, w, **ref_kwargs(attrs)).shape)
        res = None if res is None else res.astype(np.float32)
        outs = run_conv(attrs, x, w, xmask, wmask, [scale, bias] + ([] if res is None else [res]))
        expect = ops.binary_conv(x, w, scale, bias, residual=res, **ref_kwargs(attrs))
        what = f"masks x={xmask} w={wmask} residual={res is not None} bits_zero={bits_zero}"
        np.testing.assert_array_equal(outs[0], expect, err_msg=what)
        if bits_zero is not None:
            assert len(outs) == (3 if bits_zero == 0 else 2)
            got = unpacked(outs[1], cout, outs[2] if bits_zero == 0 else None)
            np.testing.assert_array_equal(got, ops.binarize(expect, bits_zero), err_msg=what)
            for o in outs[1:]:  # the unused tail bits of the last word stay 0
                assert not (o[..., -1] & ~tail_mask(cout)[-1]).any()


@pytest.mark.parametrize("pad_value", [0, 1, -1])
@pytest.mark.parametrize("case", list(CASES))
def test_bits_output(case, pad_value, path):
    for i, (xmask, wmask, xzeros) in enumerate(MASKS):
        rng, x, w = data(case, 200 + i, xzeros, wmask)
        s = ops.binary_conv_int(x, w, **ref_kwargs(conv_attrs(case, pad_value, "bits")))
        for out_mask in (0, 1):
            attrs = conv_attrs(case, pad_value, "bits", out_mask)
            rule = random_rules(rng, s, with_zero=bool(out_mask))
            outs = run_conv(attrs, x, w, xmask, wmask, [rule], n_outputs=1 + out_mask)
            got = unpacked(outs[0], attrs["cout"], outs[1] if out_mask else None)
            np.testing.assert_array_equal(got, ops.output_bits(s, rule), err_msg=f"masks x={xmask} w={wmask}")
            for o in outs:  # the unused tail bits of the last word stay 0
                assert not (o[..., -1] & ~tail_mask(attrs["cout"])[-1]).any()


def test_channel_blocks_across_threads():
    """Few output rows: output channels are split into 64-channel blocks across threads."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        rng = np.random.default_rng(7)
        x, w = signs(rng, (1, 70, 1, 9)), signs(rng, (200, 70, 3, 3))
        attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], cin=70, cout=200, output="bits", out_mask=0)
        s = ops.binary_conv_int(x, w, pads=(1, 1, 1, 1))
        rule = random_rules(rng, s, with_zero=False)
        (yb,) = run_conv(attrs, x, w, False, False, [rule])
        np.testing.assert_array_equal(unpacked(yb, 200), ops.output_bits(s, rule))
    finally:
        numba.set_num_threads(before)


def test_through_session():
    """A model with one BinaryConv node, lowered to an artifact and run by the InferenceSession."""
    rng = np.random.default_rng(3)
    x, w = signs(rng, (1, 65, 6, 6)), signs(rng, (10, 65, 3, 3))
    scale, bias = np.full(10, 0.5, np.float32), np.arange(10, dtype=np.float32)
    wb, _ = pack_dense(w)
    xb, _ = packed(x, False)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], cin=65, cout=10, output="float")
    node = helper.make_node("BinaryConv", ["x", "", "w", "", "scale", "bias"], ["y"], name="bc",
                            domain=BNNC_DOMAIN, **attrs)
    model = make_model([node], [("x", list(xb.shape), 13)], [("y", [1, 10, 3, 3])],
                       {"w": wb, "scale": scale, "bias": bias}, extra_opsets={BNNC_DOMAIN: 1})
    g = from_proto(model)
    (y,) = run_graph(g, {"x": xb})
    np.testing.assert_array_equal(y, ops.binary_conv(x, w, scale, bias, strides=(2, 2), pads=(1, 1, 1, 1)))


def test_errors():
    rng = np.random.default_rng(0)
    x, w = signs(rng, (1, 3, 4, 4)), signs(rng, (2, 3, 3, 3))
    attrs = dict(kernel_shape=[3, 3], cin=3, cout=2, output="bits", out_mask=0)
    zero_rule = np.array([[0, 0, -1, 0, 1]] * 2, np.int32)
    with pytest.raises(BnncError, match="out_mask"):
        run_conv(attrs, x, w, False, False, [zero_rule])
    wb, _ = pack_dense(w)
    xb, _ = packed(x, False)
    short = wb[:0]
    rule = np.array([[0, 0, -1, 1, 1]] * 2, np.int32)
    with pytest.raises(BnncError, match="words"):
        run_step("bnnc.BinaryConv", attrs, [xb, None, short, None, rule], {2, 4})
    with pytest.raises(BnncError, match="pad_value"):
        run_conv(dict(attrs, pad_value=2), x, w, False, False, [rule])
    with pytest.raises(BnncError, match="X_mask"):
        run_step("bnnc.BinaryConv", attrs, [xb, xb[..., :0], wb, None, rule], {2, 4})
