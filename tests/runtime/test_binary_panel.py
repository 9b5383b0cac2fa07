"""BinaryConv's panel path (runtime/kernels/binary_conv_panel.py) and its register tile
(binary_tile.py) under every way of cutting the work: bands of one or a few output rows, runs of
64 output channels, several tasks per band, rows shorter and longer than a vector (the tile's
overlapping last vector), border corrections in every band. Same references and exactness as
tests/runtime/test_binary_conv.py, whose cases run here with the cuts forced."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.kernels import binary_conv, binary_conv_stage
from runtime.kernels.binary_tile import LANES, MR, PSADBW, make_xnor_tile, tile_row, tile_weights
from tests.runtime import test_binary_conv as conv_tests


def popcount(v) -> int:
    return bin(int(v)).count("1")

# (N, Cin, H, W, Cout, kh, kw, strides, pads, dilations, group): wide rows, several words
EXTRA = {
    "c70_3x3_rows_of_19": (2, 70, 9, 19, 130, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "c64_3x3_s2_rows_of_9": (1, 64, 11, 18, 72, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),
}


@pytest.fixture(params=[(1, 64, 3, "rows"), (2, 64, 5, "whole"), (3, 128, 1, "whole"), (None, None, 4, "rows")],
                ids=lambda p: f"band{p[0]}_cb{p[1]}_tasks{p[2]}_{p[3]}_table")
def cuts(request, monkeypatch):
    """Force the panel path's bands per image, channel runs and tasks (None: its own choice), and
    its border table: a row per output row (``whole``) or per row class."""
    band, cb, tasks, table = request.param
    monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", 1 << 30 if table == "whole" else 0)
    plan = binary_conv.panel_plan

    def forced(w, oh, ow, rows, threads):
        b, c, t = plan(w, oh, ow, rows, threads)
        cout = w.shape[3]
        return band or b, min(cb, cout) if cb else c, tasks

    monkeypatch.setattr(binary_conv, "panel_plan", forced)
    monkeypatch.setattr(binary_conv, "choose_narrow", lambda *a: False)
    for name, case in EXTRA.items():
        monkeypatch.setitem(conv_tests.CASES, name, case)
    return request.param


@pytest.mark.parametrize("case", ["c63_3x3_stride2_asym", "c130_3x3_asym", "c65_5x5_mixed", "K64_1x1", *EXTRA])
def test_panel_cuts_match_the_reference(case, cuts):
    for pad_value in (0, -1):
        conv_tests.test_float_output(case, pad_value, "general")
        conv_tests.test_bits_output(case, pad_value, "general")


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("k, p, c", [(1, LANES, MR), (9, 3 * LANES + 3, 2 * MR), (5, LANES - 1, MR), (20, 49, 3 * MR)])
def test_tile_counts_every_channel_and_pixel(k, p, c, masked, dtype):
    """tile_row against popcounts taken one by one, with offsets that skip words and a k range
    that leaves words out at both ends; ``masked``: through a weight mask (ternary weights); the
    counts stored as int64 or int32 (the panel path's), the words around them untouched."""
    rng = np.random.default_rng(k * 100 + p)
    stride = p + 5
    x = rng.integers(0, 2**63, size=(k + 2) * stride, dtype=np.int64).view(np.uint64) * np.uint64(2) + np.uint64(1)
    w = rng.integers(0, 2**63, size=(1, k + 2, c), dtype=np.int64).view(np.uint64)
    m = rng.integers(0, 2**63, size=(1, k + 2, c), dtype=np.int64).view(np.uint64) if masked else None
    offs = np.arange(k + 2, dtype=np.int64) * stride + 2
    acc = np.full((c, p + 3), -1, dtype)
    tile_row(x, 1, offs, 1, k + 1, tile_weights(w, m), 0, c // MR, acc, p, masked)
    assert (acc[:, p:] == -1).all()
    acc = acc[:, :p]
    expect = np.zeros((c, p), np.int64)
    for kk in range(1, k + 1):
        for ch in range(c):
            for j in range(p):
                expect[ch, j] += popcount((x[1 + offs[kk] + j] ^ w[0, kk, ch]) & (m[0, kk, ch] if masked else ~np.uint64(0)))
    np.testing.assert_array_equal(acc, expect)


@pytest.mark.parametrize("count_bytes, psadbw", [(False, False), (True, False)] + [(True, True)] * PSADBW)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("k", [1, 31, 32, 62, 70])
def test_tile_counting_in_bytes_or_words(k, masked, count_bytes, psadbw):
    """Every way the tile can count on this host (byte counters widened every BYTE_RUN words by
    shifts or, on AVX2, ``vpsadbw``; or 64-bit lanes), against numpy: words whose every bit differs fill the byte counters to 8 per
    word, so a run one word longer than a byte holds, or a run not widened, shows; the rest
    random, k ranges over several runs that start and end inside the arrays."""
    rng = np.random.default_rng(k)
    tile = make_xnor_tile(masked, count_bytes, psadbw)

    @njit
    def run(x, offs, w, acc, k0, k1):
        tile(x, 0, offs, k0, k1, w, 0, acc, 0, acc.shape[1])

    x = rng.integers(0, 2**63, size=(k + 2) * LANES, dtype=np.int64).view(np.uint64)
    w = rng.integers(0, 2**63, size=(1, k + 2, MR), dtype=np.int64).view(np.uint64)
    m = np.full((1, k + 2, MR), ~np.uint64(0)) if masked else None
    x[: (k + 2) * LANES // 2] = ~np.uint64(0)
    w[0, :, 0] = 0  # channel 0 differs from the all-ones words in every bit
    if masked:
        m[0, 1::3, 1:] = rng.integers(0, 2**63, size=m[0, 1::3, 1:].shape, dtype=np.int64).view(np.uint64)
    offs = np.arange(k + 2, dtype=np.int64) * LANES
    acc = np.zeros((MR, LANES), np.int64)
    run(x, offs, tile_weights(w, m), acc, 1, k + 1)
    xs = x.reshape(k + 2, 1, LANES)[1:k + 1]
    ws = w[0, 1:k + 1, :, None]
    diff = (xs ^ ws) & (m[0, 1:k + 1, :, None] if masked else ~np.uint64(0))
    expect = np.unpackbits(diff.view(np.uint8).reshape(*diff.shape, 8), axis=-1).sum(axis=(0, 3))
    np.testing.assert_array_equal(acc, expect)


def test_panel_border_table_counts_outside_taps(monkeypatch):
    """base: for a 3x3 pad-1 layer, three row classes (top, middle, bottom); a corner pixel has 5
    taps outside, an edge pixel 3, and the table gives taps * Cin - outside * Cin + 2 * the
    popcount of those taps' weights; ternary weights count only their nonzero weights. A table
    small enough has a row per output row instead, the same values."""
    from runtime.kernels.binary_conv_panel import panel_weights

    rng = np.random.default_rng(3)
    cin, cout, h = 64, 8, 4
    w = rng.integers(0, 2**63, size=(1, 9, 1, cout), dtype=np.int64).view(np.uint64)
    m = rng.integers(0, 2**63, size=(1, 9, 1, cout), dtype=np.int64).view(np.uint64)
    geom = (3, 3, 1, 1, 1, 1, 1, 1, h, h, cin)
    for wm in (None, m):
        monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", cout * h * h * 4)
        _, whole, rows, irun, _, _ = panel_weights(w, geom, h, h, wm)
        assert irun == 0 and whole.shape == (cout, h * h) and list(rows) == list(range(h))
        whole = whole.reshape(cout, h, h)
        monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", cout * h * h * 4 - 1)
        _, tb, rcls, irun, wmasked, _ = panel_weights(w, geom, h, h, wm)
        assert wmasked == (wm is not None)
        assert list(rcls[1:-1]) == [-1, -1] and len({rcls[0], rcls[-1]}) == 2 and rcls.min() == -1 and irun >= 1
        assert tb.shape == (cout, (3 + irun) * h)
        base, inner = tb[:, :3 * h].reshape(cout, 3, h), tb[:, 3 * h:]
        np.testing.assert_array_equal(whole[:, [0, h - 1]], base[:, rcls[[0, h - 1]]])
        np.testing.assert_array_equal(whole[:, 1:-1], np.broadcast_to(inner[:, None, :h], (cout, h - 2, h)))
        assert (inner == np.tile(inner[:, :h], (1, irun))).all()
        keep = np.full((9, cout), ~np.uint64(0)) if wm is None else wm[0, :, 0]
        wpc = np.array([[popcount(w[0, t, 0, c] & keep[t, c]) for c in range(cout)] for t in range(9)])
        wcnt = np.full((9, cout), cin) if wm is None else np.array([[popcount(v) for v in wm[0, t, 0]] for t in range(9)])
        # the taps outside for pixels (0, 0), (0, 1) and (1, 0): row of base, row of inner
        for row, ow, outside in ((base[:, rcls[0]], 0, [0, 1, 2, 3, 6]), (base[:, rcls[0]], 1, [0, 1, 2]), (inner, 0, [0, 3, 6])):
            inside = [t for t in range(9) if t not in outside]
            np.testing.assert_array_equal(row[:, ow], wcnt[inside].sum(axis=0) + 2 * wpc[outside].sum(axis=0))
        np.testing.assert_array_equal(inner[:, 1], wcnt.sum(axis=0))


def _bireal_block(rng, cin: int, cout: int, hw: int, stride: int):
    """x -> Sign -> 3x3 Conv (+-1 weights, pad 1, ``stride``) -> BatchNorm -> + shortcut, then
    Sign -> 3x3 Conv -> BatchNorm -> + that sum: two Bi-Real Net blocks (the shortcut of a
    strided block an average pool and, when the channels change, a 1x1 float conv)."""
    from onnx import helper

    def bn(name, c):
        return {f"{name}_s": rng.uniform(0.5, 2, c).astype(np.float32), f"{name}_b": rng.standard_normal(c).astype(np.float32),
                f"{name}_m": rng.standard_normal(c).astype(np.float32), f"{name}_v": rng.uniform(0.5, 2, c).astype(np.float32)}

    inits = {"w1": np.sign(rng.standard_normal((cout, cin, 3, 3))).astype(np.float32),
             "w2": np.sign(rng.standard_normal((cout, cout, 3, 3))).astype(np.float32), **bn("n1", cout), **bn("n2", cout)}
    nodes = [helper.make_node("Sign", ["x"], ["a1"]),
             helper.make_node("Conv", ["a1", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[stride, stride]),
             helper.make_node("BatchNormalization", ["c1", "n1_s", "n1_b", "n1_m", "n1_v"], ["b1"])]
    short = "x"
    if stride > 1:
        odd = hw % stride  # an odd image: the pool's last window padded, as the conv's
        nodes.append(helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[stride, stride], strides=[stride, stride],
                                      pads=[0, 0, odd, odd]))
        short = "p"
    if cin != cout:
        inits["ws"] = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
        nodes.append(helper.make_node("Conv", [short, "ws"], ["s"]))
        short = "s"
    nodes += [helper.make_node("Add", ["b1", short], ["r1"]), helper.make_node("Sign", ["r1"], ["a2"]),
              helper.make_node("Conv", ["a2", "w2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c2", "n2_s", "n2_b", "n2_m", "n2_v"], ["b2"]),
              helper.make_node("Add", ["b2", "r1"], ["y"])]
    return nodes, inits


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("table", ["whole", "rows"])
@pytest.mark.parametrize("cin, cout, hw, stride", [(64, 64, 13, 1), (70, 128, 15, 2), (128, 130, 9, 2), (64, 72, 32, 1)])
def test_bireal_blocks_match_onnxruntime(cin, cout, hw, stride, table, threads, tmp_path, monkeypatch):
    """Two Bi-Real blocks compiled by the default pipeline (their binary convs on the panel
    path, the residual sum and its sign fused into the first conv's output stage) and run on 1-3
    threads with either border table: onnxruntime's result on the float graph. Odd sizes, a
    stride of 2 and channel counts that are not multiples of 64 included; the output stage's
    blocks of eight channels (binary_span.span_block) and, on 32x32 outputs (rows 4 KB apart:
    binary_conv_stage._spread), channel by channel."""
    import onnx

    import bnnc
    from runtime import InferenceSession
    from tests.helpers import ort_run
    from tests.runtime.test_float_helpers import build, compare

    rng = np.random.default_rng(cin + hw + stride)
    nodes, inits = _bireal_block(rng, cin, cout, hw, stride)
    x = rng.standard_normal((1, cin, hw, hw)).astype(np.float32)
    model = build(nodes, {"x": x}, inits)
    onnx.save(model, tmp_path / "m.onnx")
    art = bnnc.compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "m.bnn")).path
    monkeypatch.setattr(binary_conv_stage, "WHOLE_TABLE_BYTES", 1 << 30 if table == "whole" else 0)
    sess = InferenceSession(art, threads=threads, plan="steps")
    panels = [k for k in sess._kernels if getattr(k, "panel", None) is not None]
    assert len(panels) == 2
    assert all((k.panel[2] == np.arange(k.geom[8])).all() == (table == "whole") for k in panels)
    compare(sess.run(None, {"x": x}), ort_run(model, {"x": x}), rel=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("read_again", [False, True])
@pytest.mark.parametrize("cin, cout, hw, stride", [(64, 64, 11, 1), (70, 130, 17, 2), (16, 16, 11, 1), (32, 40, 17, 2)])
def test_output_takes_the_dying_residual_buffer(cin, cout, hw, stride, read_again, threads, tmp_path):
    """A panel-path conv (a narrow-path one with 16 or 32 input channels, whose output stage is
    the panel path's) whose residual R dies at it writes its output over R's buffer (the
    session's plan; the output stage then reads R from the output itself): the second conv of two
    Bi-Real blocks, and the first when its shortcut is a computed value (a strided block's 1x1
    conv). With R read again after the conv (``read_again``: one more Add), the buffers stay
    apart. Either way onnxruntime's result, on 1 and 2 threads."""
    import onnx
    from onnx import helper

    import bnnc
    from runtime import InferenceSession
    from tests.helpers import ort_run
    from tests.runtime.test_float_helpers import build, compare

    rng = np.random.default_rng(cin + hw + stride + read_again)
    nodes, inits = _bireal_block(rng, cin, cout, hw, stride)
    if read_again:
        nodes.append(helper.make_node("Add", ["y", "r1"], ["z"]))
    x = rng.standard_normal((1, cin, hw, hw)).astype(np.float32)
    model = build(nodes, {"x": x}, inits)
    onnx.save(model, tmp_path / "m.onnx")
    art = bnnc.compile_model(str(tmp_path / "m.onnx"), str(tmp_path / "m.bnn")).path
    sess = InferenceSession(art, threads=threads, plan="steps")
    slot = {o: j for s, slots in zip(sess._steps, sess._step_slots) if slots for o, j in zip(s["outputs"], slots) if o}
    path = "narrow" if cin < 64 else "panel"
    convs = [(s, k) for s, k in zip(sess._steps, sess._kernels) if getattr(k, path, None) is not None]
    assert len(convs) == 2 and all(k.overwritable_input() == k.stage.res_index for _, k in convs)
    shared = [slot[s["outputs"][0]] == slot.get(s["inputs"][k.stage.res_index]) for s, k in convs]
    assert shared == [stride > 1, not read_again]
    compare(sess.run(None, {"x": x}), ort_run(model, {"x": x}), rel=1e-5)
