"""bnnc.BinaryDense kernel against the numpy reference (bnnc.ops), bit-exact, at awkward sizes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from bnnc import ops
from bnnc.ir import BNNC_DOMAIN
from bnnc.ir_convert import from_proto
from runtime.bitpack import pack_dense, tail_mask
from runtime.errors import BnncError
from tests.helpers import make_model, run_graph
from tests.runtime.test_binary_helpers import packed, random_rules, run_step, signs, unpacked

# name: (N, logical input shape after N, Cout, in_order)
CASES = {
    "K1": (1, (1,), 3, "chw"),
    "K63": (2, (63,), 64, "chw"),
    "K64": (1, (64,), 65, "chw"),
    "K65": (3, (65,), 63, "chw"),
    "K130": (1, (130,), 130, "chw"),
    "image_c65_chw": (2, (65, 2, 3), 10, "chw"),
    "image_c65_hwc": (2, (65, 2, 3), 10, "hwc"),
    "image_c3_hwc": (1, (3, 3, 2), 129, "hwc"),
}
MASKS = [(False, False), (True, False), (False, True), (True, True)]


def setup(case, seed, xmask, wmask, output, out_mask=0):
    n, shape, cout, order = CASES[case]
    rng = np.random.default_rng(seed)
    k = int(np.prod(shape))
    x = signs(rng, (n, *shape), xmask)
    w = signs(rng, (cout, k), wmask)
    chw = list(shape) if len(shape) == 3 else [k, 1, 1]
    attrs = dict(cout=cout, k=k, in_chw=chw, in_order=order, output=output, out_mask=out_mask, macs=0)
    xb, xm = packed(x, xmask)
    xb = xb.reshape(n, -1)  # a flattened packed image: [N, H*W*words]
    xm = None if xm is None else xm.reshape(n, -1)
    wb, wm = pack_dense(w, with_mask=wmask)
    return rng, x, w, attrs, [xb, xm, wb, wm]


@pytest.mark.parametrize("case", list(CASES))
def test_float_output(case):
    for i, (xmask, wmask) in enumerate(MASKS):
        rng, x, w, attrs, ins = setup(case, 10 + i, xmask, wmask, "float")
        scale = rng.standard_normal(attrs["cout"]).astype(np.float32)
        bias = rng.standard_normal(attrs["cout"]).astype(np.float32)
        res = rng.standard_normal((x.shape[0], attrs["cout"])).astype(np.float32) if i % 2 == 0 else None
        bits_zero = [1, None, 0, -1][i]  # the float output also binarized (a fused Binarize)
        if bits_zero is not None:
            attrs["bits_zero"] = bits_zero
            scale[0] = bias[0] = 0  # channel 0 is exactly 0: the binarized output's zero case
        outs = run_step("bnnc.BinaryDense", attrs, ins + [scale, bias] + ([] if res is None else [res]), {2, 3, 4, 5})
        expect = ops.binary_dense(x, w, scale, bias, in_order=attrs["in_order"], residual=res)
        what = f"masks x={xmask} w={wmask} residual={res is not None} bits_zero={bits_zero}"
        np.testing.assert_array_equal(outs[0], expect, err_msg=what)
        if bits_zero is not None:
            got = unpacked(outs[1], attrs["cout"], outs[2] if bits_zero == 0 else None)
            np.testing.assert_array_equal(got, ops.binarize(expect, bits_zero), err_msg=what)


@pytest.mark.parametrize("case", list(CASES))
def test_bits_output(case):
    for i, (xmask, wmask) in enumerate(MASKS):
        for out_mask in (0, 1):
            rng, x, w, attrs, ins = setup(case, 20 + i, xmask, wmask, "bits", out_mask)
            s = ops.binary_dense_int(ops.dense_input(x, attrs["in_order"]), w)
            rule = random_rules(rng, s, with_zero=bool(out_mask))
            outs = run_step("bnnc.BinaryDense", attrs, ins + [rule], {2, 3, 4}, n_outputs=1 + out_mask)
            got = unpacked(outs[0], attrs["cout"], outs[1] if out_mask else None)
            np.testing.assert_array_equal(got, ops.output_bits(s, rule), err_msg=f"masks x={xmask} w={wmask}")
            for o in outs:
                assert not (o[:, -1] & ~tail_mask(attrs["cout"])[-1]).any()


def test_unflattened_input_and_session():
    """The packed 4-D image fed directly (no Flatten), through a lowered model and the session."""
    rng = np.random.default_rng(5)
    x, w = signs(rng, (1, 70, 2, 2)), signs(rng, (5, 280))
    xb, _ = packed(x, False)
    wb, _ = pack_dense(w)
    rule = np.array([[0, -1, -1, 1, 1], [0, -1, 1, -1, -1], [2, 2, -1, 1, 1], [0, 0, 1, 1, 1], [-4, -3, -1, 1, 1]], np.int32)
    node = helper.make_node("BinaryDense", ["x", "", "w", "", "rule"], ["y"], name="bd", domain=BNNC_DOMAIN,
                            cout=5, k=280, in_chw=[70, 2, 2], in_order="chw", output="bits", out_mask=0)
    model = make_model([node], [("x", list(xb.shape), 13)], [("y", [1, 1], 13)], {"w": wb, "rule": rule},
                       extra_opsets={BNNC_DOMAIN: 1})
    (y,) = run_graph(from_proto(model), {"x": xb})
    s = ops.binary_dense_int(ops.dense_input(x, "chw"), w)
    np.testing.assert_array_equal(unpacked(y, 5), ops.output_bits(s, rule))


def test_errors():
    rng, x, w, attrs, ins = setup("K65", 0, False, False, "float")
    one = np.ones(attrs["cout"], np.float32)
    with pytest.raises(BnncError, match="in_chw"):
        run_step("bnnc.BinaryDense", dict(attrs, in_chw=[5, 13, 2]), ins + [one, one], {2, 3, 4, 5},
                 out_specs=[((3, attrs["cout"]), "float32")])
    with pytest.raises(BnncError, match="scale"):
        run_step("bnnc.BinaryDense", attrs, ins + [one[:1], one], {2, 3, 4, 5})
