"""bnnc.BinaryWeightConv by sign tables (runtime/kernels/binary_weight_table.py) against the numpy
reference (bnnc.ops) and onnxruntime: wide rows and packed blocks forced, awkward sizes (taps not
a multiple of the group size, channels not a multiple of the tile, odd widths, strides, dilation,
asymmetric padding, batches), every fused activation, one and two threads, the plan function and
the step-by-step run; and the choice between the tables and the float convolution."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import bnnc
from bnnc import ops
from runtime import InferenceSession
from runtime.bitpack import pack_dense
from runtime.kernels import binary_weight as bw
from runtime.kernels.base import KERNELS, Step
from runtime.threads import limit_threads
from tests.helpers import assert_close, ort_run
from tests.runtime.test_binary_helpers import run_step, signs
from tests.runtime.test_binary_weight import ACTS, _act_attrs, _tolerance
from tests.runtime.test_float_helpers import build, compare

# name: (N, Cin, H, W, Cout, kh, kw, strides, pads, dilations)
CASES = {
    "3x3_pad1": (1, 32, 12, 12, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "taps_27_odd_width": (1, 3, 9, 13, 11, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "taps_5_1x1": (2, 5, 7, 6, 9, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1_stride2": (1, 17, 9, 9, 16, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1)),
    "5x5_s2_asym": (2, 6, 11, 10, 13, 5, 5, (2, 1), (2, 0, 1, 2), (1, 1)),
    "3x3_dilation2": (1, 7, 10, 9, 8, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    "batch3_small_plane": (3, 64, 4, 5, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "no_pad_wide": (1, 10, 6, 40, 7, 3, 2, (1, 1), (0, 0, 0, 0), (1, 1)),
}


@pytest.fixture(params=["wide", "packed"])
def forced(request, monkeypatch):
    """The table path in the given layout, whatever the cost estimate says."""
    monkeypatch.setattr(bw.TablePlan, "choose", staticmethod(
        lambda conv, v, sc, b: bw.TablePlan(conv, v, sc, b, request.param == "packed")))
    return request.param


def _layer(case, seed):
    n, cin, h, w, cout, kh, kw, st, pads, dil = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wv = signs(rng, (cout, cin, kh, kw))
    scale = rng.uniform(0.1, 2, cout).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    attrs = dict(kernel_shape=[kh, kw], strides=list(st), pads=list(pads), dilations=list(dil), group=1, cin=cin,
                 cout=cout)
    geo = dict(strides=st, pads=pads, dilations=dil)
    return x, wv, scale, bias, attrs, geo


@pytest.mark.parametrize("case", list(CASES))
def test_table_conv(case, forced):
    x, wv, scale, bias, attrs, geo = _layer(case, len(case))
    (y,) = run_step("bnnc.BinaryWeightConv", attrs, [x, pack_dense(wv)[0], None, scale, bias], {1, 3, 4})
    assert_close(y, ops.binary_weight_conv(x, wv, scale, bias, **geo), rel=1e-5)


@pytest.mark.parametrize("act,params", ACTS)
def test_table_conv_activation(act, params, forced):
    x, wv, scale, bias, attrs, geo = _layer("5x5_s2_asym", 5)
    attrs.update(_act_attrs(act, params))
    (y,) = run_step("bnnc.BinaryWeightConv", attrs, [x, pack_dense(wv)[0], None, scale, bias], {1, 3, 4})
    expect = ops.binary_weight_conv(x, wv, scale, bias, **geo, activation=act, activation_params=params)
    assert_close(y, expect, rel=_tolerance(ops.binary_weight_conv(x, wv, scale, bias, **geo)))


@pytest.mark.parametrize("case", ["3x3_pad1", "batch3_small_plane", "5x5_s2_asym"])
def test_table_conv_two_threads(case, forced, monkeypatch):
    """The parallel kernel: tasks of row runs (wide) or of blocks (packed), the phase split in
    parallel too; the split threshold lowered so that these small layers take it."""
    monkeypatch.setattr(bw, "SPLIT_WORK", 0)
    monkeypatch.setattr("runtime.kernels.base.PARALLEL_WORK", 0)
    x, wv, scale, bias, attrs, geo = _layer(case, 11)
    attrs.update(activation="Tanh")
    with limit_threads(2):
        (y,) = run_step("bnnc.BinaryWeightConv", attrs, [x, pack_dense(wv)[0], None, scale, bias], {1, 3, 4})
    expect = ops.binary_weight_conv(x, wv, scale, bias, **geo, activation="Tanh")
    assert_close(y, expect, rel=_tolerance(ops.binary_weight_conv(x, wv, scale, bias, **geo)))


def _kernel(case: str, ternary: bool = False):
    x, wv, scale, bias, attrs, _ = _layer(case, 3)
    if ternary:
        wv[0, 0, 0, 0] = 0
    wb, wm = pack_dense(wv, with_mask=ternary)
    ins = [x, wb, wm, scale, bias]
    out = ops.output_shapes("bnnc.BinaryWeightConv", attrs, x.shape, 1)
    step = Step("node", "bnnc.BinaryWeightConv", attrs, [None if a is None else a.shape for a in ins],
                [None if a is None else str(a.dtype) for a in ins], [tuple(s) for s, _ in out], [d for _, d in out],
                [None if i == 0 else a for i, a in enumerate(ins)])
    return KERNELS["bnnc.BinaryWeightConv"](step)


def test_choice():
    """Tables where they do less work than the float conv (a 32 -> 64 3x3 layer), the float conv
    for ternary weights (a zero has no sign) and where the tables cost more (5 taps, 9 channels)."""
    assert _kernel("3x3_pad1").table is not None
    assert _kernel("3x3_pad1", ternary=True).table is None
    assert _kernel("taps_5_1x1").table is None


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_binary_weight_network_on_tables(threads, batch, tmp_path, monkeypatch):
    """A binary-weight network (+-alpha weights, BatchNorm and Relu after each conv) compiled by the
    default pipeline, its convs on the tables (checked), in the plan function and step by step,
    against onnxruntime."""
    monkeypatch.setattr(bw, "SPLIT_WORK", 1 << 16)  # small layers, still split over the threads
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 16, 14, 14)).astype(np.float32)
    nodes, inits, prev = [], {}, "x"
    for i, (cin, cout, s) in enumerate([(16, 64, 1), (64, 48, 2)]):
        w = (signs(rng, (cout, cin, 3, 3)) * rng.uniform(0.1, 1, (cout, 1, 1, 1))).astype(np.float32)
        inits.update({f"w{i}": w, f"g{i}": rng.uniform(0.5, 2, cout).astype(np.float32),
                      f"b{i}": rng.standard_normal(cout).astype(np.float32),
                      f"m{i}": rng.standard_normal(cout).astype(np.float32),
                      f"v{i}": rng.uniform(0.5, 2, cout).astype(np.float32)})
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[s, s]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"g{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"])]
        prev = f"r{i}"
    model = build(nodes, {"x": x}, inits)
    onnx.save(model, tmp_path / "m.onnx")
    art = bnnc.compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "m.bnn")).path
    expect = ort_run(model, {"x": x})
    for mode in ("emitted", "steps"):
        sess = InferenceSession(art, threads=threads, plan=mode)
        convs = [k for k in sess._kernels if k.step.op == "bnnc.BinaryWeightConv"]
        assert len(convs) == 2 and all(k.table is not None for k in convs)
        compare(sess.run(None, {"x": x}), expect)
