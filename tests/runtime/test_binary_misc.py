"""bnnc.Binarize and bnnc.BitMaxPool kernels against the numpy reference (bnnc.ops)."""

from __future__ import annotations

import numpy as np
import pytest

from bnnc import ops
from runtime.bitpack import pack_activation, pack_bits, tail_mask
from runtime.errors import BnncError
from tests.runtime.test_binary_helpers import packed, run_emitted, run_step, signs, unpacked

# rows of fewer pixels than a vector and of several vectors and a bit (Binarize takes eight
# channels a pass: whole blocks, a word of one block, channels past the last whole block)
SHAPES = [(2, 1, 3, 4), (1, 63, 2, 5), (1, 64, 3, 3), (2, 65, 4, 1), (1, 130, 2, 3), (1, 72, 3, 19), (2, 17, 2, 33),
          (3, 1), (2, 64), (1, 65), (2, 130)]


def floats_with_zeros(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.25] = 0.0
    x.flat[0] = -0.0  # negative zero is zero too
    x.flat[-1] = np.nan  # NaN binarizes like 0 (bnnc.ops.binarize)
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("zero", [1, -1, 0])
def test_binarize(shape, zero):
    rng = np.random.default_rng(len(shape) * 100 + shape[1])
    x = floats_with_zeros(rng, shape)
    n_out = 2 if zero == 0 else 1
    outs = run_step("bnnc.Binarize", dict(zero=zero), [x], set(), n_outputs=n_out)
    c = shape[1]
    got = unpacked(outs[0], c, outs[1] if n_out == 2 else None)
    np.testing.assert_array_equal(got, ops.binarize(x, zero))
    bits, mask = pack_activation(ops.binarize(x, zero), with_mask=n_out == 2)
    np.testing.assert_array_equal(outs[0], bits)  # tail bits 0 as well
    if n_out == 2:
        np.testing.assert_array_equal(outs[1], mask)


def test_binarize_mask_output_with_nonzero_convention():
    """zero = +1 with a mask output: the mask is all ones on the valid channels."""
    x = floats_with_zeros(np.random.default_rng(1), (1, 70, 2, 2))
    bits, mask = run_step("bnnc.Binarize", dict(zero=1), [x], set(), n_outputs=2)
    assert (mask[..., 0] == tail_mask(70)[0]).all() and (mask[..., 1] == tail_mask(70)[1]).all()
    with pytest.raises(BnncError, match="mask"):
        run_step("bnnc.Binarize", dict(zero=0), [x], set(), n_outputs=1)


# (N, C, H, W, kernel, strides, pads, dilations, ceil_mode)
POOLS = {
    "2x2_s2": ((1, 65, 6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),
    "3x3_s2_pad1": ((2, 63, 7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),
    "3x3_s2_ceil": ((1, 130, 8, 7), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "3x3_s2_pad_ceil_asym": ((1, 1, 6, 9), (3, 2), (2, 3), (1, 0, 1, 1), (1, 1), 1),
    "2x2_dilation2": ((1, 64, 7, 7), (2, 2), (1, 1), (1, 1, 0, 0), (2, 2), 0),
    "window_ceil_dropped": ((1, 3, 6, 6), (3, 3), (3, 3), (0, 0, 2, 2), (1, 1), 1),
}


@pytest.mark.parametrize("case", list(POOLS))
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("inverted", [False, True])
def test_bit_maxpool(case, with_mask, inverted):
    shape, k, st, pads, dil, ceil = POOLS[case]
    rng = np.random.default_rng(sum(shape))
    x = signs(rng, shape, zeros=with_mask)
    if with_mask:  # some windows all -1, all 0 or all +1, so every outcome occurs
        x[:, :, :2, :2] = -1
        x[:, :, 2:4, 2:4] = 0
        x[:, :, 4:, 4:] = 1
    attrs = dict(kernel_shape=list(k), strides=list(st), pads=list(pads), dilations=list(dil), ceil_mode=ceil,
                 channels=shape[1])
    xb, xm = packed(x, with_mask)
    invert = rng.random(shape[1]) < 0.5 if inverted else None
    ins = [xb, xm] + ([pack_bits(invert)] if inverted else [])
    outs = run_step("bnnc.BitMaxPool", attrs, ins, {2}, n_outputs=2 if with_mask else 1)
    got = unpacked(outs[0], shape[1], outs[1] if with_mask else None)
    np.testing.assert_array_equal(got, ops.bit_maxpool(x, k, st, pads, dil, ceil, invert))
    for o in outs:
        assert not (o[..., -1] & ~tail_mask(shape[1])[-1]).any()


@pytest.mark.parametrize("case", list(POOLS) + ["large_3x3_s2_pad1"])
@pytest.mark.parametrize("inverted", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_bit_maxpool_emitted(case, inverted, threads, tmp_path):
    """Without a nonzero mask the plan function pools in literal loops of its own (row and
    column runs, only valid taps; runtime/kernels/pool_emit.py): against the reference, the
    large case split over two threads."""
    shape, k, st, pads, dil, ceil = POOLS.get(case) or ((2, 130, 97, 96), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0)
    rng = np.random.default_rng(sum(shape) + 1)
    x = signs(rng, shape)
    x[:, :, :3, :3] = -1  # windows all -1 and all +1, where max and min agree
    x[:, :, -3:, -3:] = 1
    attrs = dict(kernel_shape=list(k), strides=list(st), pads=list(pads), dilations=list(dil), ceil_mode=ceil,
                 channels=shape[1])
    invert = rng.random(shape[1]) < 0.5 if inverted else None
    ins = [packed(x, False)[0], None] + ([pack_bits(invert)] if inverted else [])
    (got,) = run_emitted("bnnc.BitMaxPool", attrs, ins, {2}, tmp_path / "pool.bnn", threads)
    np.testing.assert_array_equal(unpacked(got, shape[1]), ops.bit_maxpool(x, k, st, pads, dil, ceil, invert))
    assert not (got[..., -1] & ~tail_mask(shape[1])[-1]).any()


def test_bit_maxpool_errors():
    x = signs(np.random.default_rng(0), (1, 3, 4, 4), zeros=True)
    xb, xm = packed(x, True)
    attrs = dict(kernel_shape=[2, 2], strides=[2, 2], channels=3)
    with pytest.raises(BnncError, match="Y_mask"):
        run_step("bnnc.BitMaxPool", attrs, [xb, xm], set(), n_outputs=1)
    with pytest.raises(BnncError, match="invert"):
        run_step("bnnc.BitMaxPool", attrs, [xb, xm, np.zeros(2, np.uint64)], {2}, n_outputs=2)


