"""benchmarks/floor.py's parts (not its timings): the bare tile does the layer's XOR-popcount
work exactly, and the float part is the model without its binary layers."""

import json
import os
import sys

import numpy as np
import onnx
import pytest

from bnnc import workloads
from bnnc.bench import load_engines
from bnnc.ir import op_counts, shape
from bnnc.ir_convert import from_proto

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from floor import binary_layers, float_part  # noqa: E402
from xnor_tile import Tile  # noqa: E402


def _popcount(x: np.ndarray) -> int:
    return int(np.unpackbits(np.ascontiguousarray(x).view(np.uint8)).sum())


@pytest.mark.parametrize("ternary", [False, True])
@pytest.mark.parametrize("pixels_inner", [False, True])
def test_tile_counts_every_word_of_the_layer(ternary, pixels_inner):
    pixels, bits, channels = 100, 130, 7  # K = 130 bits: 3 words
    t = Tile(pixels, bits, channels, ternary, threads=1, pixels_inner=pixels_inner)
    act = (lambda p: t.a[:, p % 64]) if pixels_inner else (lambda p: t.a[p % 64])
    wgt = (lambda c: t.w[c]) if pixels_inner else (lambda c: t.w[:, c])
    mask = (lambda c: t.m[:, c]) if ternary else (lambda c: np.uint64(2**64 - 1))
    want = sum(_popcount((act(p) ^ wgt(c)) & mask(c)) for p in range(pixels) for c in range(channels))
    assert t.words == 3 and t.macs == pixels * channels * bits
    assert t.run() == want * t.reps
    assert Tile(pixels, bits, channels, ternary, threads=2, pixels_inner=pixels_inner).run() > 0


def test_float_part_is_the_model_without_its_binary_layers(tmp_path):
    path = str(tmp_path / "bireal.onnx")
    onnx.save(workloads.birealnet18(size=32, classes=10, width=16), path)
    e = load_engines(path)
    layers = json.loads(e.manifest["metadata"]["bnnc.layers"])
    binary = binary_layers(e.reference, layers)
    assert len(binary) == 16
    assert (binary[0].pixels, binary[0].bits, binary[0].channels) == (8 * 8, 16 * 9, 16)
    assert sum(b.pixels * b.bits * b.channels for b in binary) == sum(r["macs"] for r in layers if r["mode"] == "xnor")
    before = len(e.reference.graph.node)
    cut, feeds = float_part(e.reference, layers, e.manifest["plan"])
    assert len(e.reference.graph.node) == before  # the caller's model is left whole
    g = from_proto(onnx.load_from_string(cut))
    ops = op_counts(g.graph)
    float_convs = sum(r["mode"] == "float" and r["op"] == "Conv" for r in layers)
    assert ops["Conv"] == float_convs and "Sign" not in ops
    assert ops["BatchNormalization"] == float_convs  # the stem's and the shortcuts', not the blocks'
    assert ops["Gemm"] == 1 and ops["MaxPool"] == 1 and ops["AveragePool"] == 3
    # a block's result (the shortcut sum bnnc computes inside the binary conv) is fed, not computed;
    # float ops read those of each stage's last block (the next AvgPool shortcut, the global pool)
    assert len(feeds) == 4 and "Add" not in ops
    inputs = {v.name: v for v in g.graph.inputs}
    assert all(v.shape == shape(inputs[k]) for k, v in feeds.items())
