"""Benchmark: BinaryConv's two +-1-weight paths (the narrow one for few input channels,
runtime/kernels/binary_conv_narrow.py, and the other one: the panel path for one group,
binary_conv_panel.py, the tiled one with groups, binary_conv_tiled.py; "tiled" below) on layer shapes from small to wide, with
onnxruntime's float Conv of the same layer for scale. The data for the path choice in
runtime.kernels.binary_conv.choose_narrow; "auto" marks the path that function picks.

Each layer: 3x3, stride 1, pads 1 (zero padding), batch 1, bits output (a binarizer follows).
Both kernels are checked to give identical bits before timing; medians of interleaved runs.

    python benchmarks/bench_binary_conv_paths.py [--threads 1] [--reps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import runtime.kernels.binary_conv as binary_conv
from runtime.bitpack import nwords, pack_activation, pack_dense
from runtime.kernels import KERNELS, Step

# (Cin, Cout, H=W, group)
SHAPES = [(8, 8, 64, 1), (16, 16, 32, 1), (16, 32, 32, 1), (32, 32, 32, 1), (32, 64, 32, 1), (64, 64, 16, 1),
          (64, 64, 32, 1), (64, 128, 16, 1), (96, 96, 16, 1), (128, 128, 8, 1), (128, 128, 28, 1),
          (256, 256, 14, 1), (64, 64, 32, 64), (128, 128, 16, 4)]


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def ort_conv(x: np.ndarray, w: np.ndarray, group: int, threads: int):
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.astype(np.float32)}
    return lambda: sess.run(None, feed)


def bnnc_conv(x: np.ndarray, w: np.ndarray, group: int, narrow: bool):
    cin, cout, h = x.shape[1], w.shape[0], x.shape[2]
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=group,
                 cin=cin, cout=cout, pad_value=0, output="bits", out_mask=0)
    rule = np.zeros((cout, 5), np.int32)
    rule[:, 2:] = (-1, 1, 1)
    xb, _ = pack_activation(x)
    wb, _ = pack_dense(w)
    ins = [xb, None, wb, None, rule]
    step = Step(name="conv", op="bnnc.BinaryConv", attrs=attrs,
                in_shapes=[None if a is None else tuple(a.shape) for a in ins],
                in_dtypes=[None if a is None else str(a.dtype) for a in ins],
                out_shapes=[(1, h, h, nwords(cout))], out_dtypes=["uint64"],
                consts=[None, None, wb, None, rule])
    choose = binary_conv.choose_narrow
    binary_conv.choose_narrow = lambda *a: narrow
    try:
        kernel = KERNELS["bnnc.BinaryConv"](step)
    finally:
        binary_conv.choose_narrow = choose
    outs = [np.empty((1, h, h, nwords(cout)), np.uint64)]
    scratch = kernel.make_scratch()
    return (lambda: kernel.run(ins, outs, scratch)), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"BinaryConv 3x3 pads 1, batch 1, bits output, {args.threads} thread(s), medians of {args.reps} runs (ms)")
    print(f"{'Cin':>4} {'Cout':>5} {'HxW':>6} {'g':>3} {'M MACs':>7} {'onnxruntime':>12} {'tiled':>9} "
          f"{'narrow':>9} {'narrow/tiled':>15}  auto")
    for cin, cout, h, g in SHAPES:
        x = rng.choice(np.array([-1, 1], np.int8), size=(1, cin, h, h))
        w = rng.choice(np.array([-1, 1], np.int8), size=(cout, cin // g, 3, 3))
        runs = {"onnxruntime": ort_conv(x, w, g, args.threads)}
        results = {}
        for name, narrow in (("tiled", False), ("narrow", True)):
            runs[name], results[name] = bnnc_conv(x, w, g, narrow)
        for fn in runs.values():
            for _ in range(3):
                fn()
        if not np.array_equal(results["tiled"][0], results["narrow"][0]):
            raise SystemExit(f"tiled and narrow kernels disagree on {cin}->{cout} {h}x{h} g{g}")
        ms = {name: [] for name in runs}
        for _ in range(args.reps):  # interleaved
            for name, fn in runs.items():
                ms[name].append(median_ms(fn, 1))
        med = {name: statistics.median(v) for name, v in ms.items()}
        auto = "narrow" if binary_conv.choose_narrow(cin // g, 3, cout // g, h, g) else "tiled"
        macs = cout * (cin // g) * 9 * h * h / 1e6
        print(f"{cin:>4} {cout:>5} {h:>3}x{h:<2} {g:>3} {macs:>7.1f} {med['onnxruntime']:>12.3f} {med['tiled']:>9.3f} "
              f"{med['narrow']:>9.3f} {med['tiled'] / med['narrow']:>14.2f}x  {auto}")


if __name__ == "__main__":
    main()
