"""Benchmark: one binary 3x3 convolution, bnnc's BinaryConv kernel against onnxruntime's float Conv.

The layer: 256 -> 256 channels, 3x3, pads 1, stride 1, 14x14 input, batch 1 (115.6 M MACs).
onnxruntime runs the float ONNX Conv on +-1 values; bnnc runs the bnnc.BinaryConv kernel on the
packed input with the packed weights (ONNX zero padding, exact). Both run in this process with
the same thread count, interleaved, after warm-up; we print medians, min/max, the speedup ratio
and binary GMAC/s. "binarize+conv" adds the bnnc.Binarize of a float input, the cost of a
layer whose input arrives in float.

With more than one thread, onnxruntime's pool threads spin-wait after each run by default and, in
one process interleaved with bnnc, take the cores from numba's threads (bnnc then runs several
times slower); the benchmark turns that spinning off unless --ort-spin is given.

    python benchmarks/bench_binary_conv.py [--threads N] [--reps 50] [--output float|bits] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numba
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime.bitpack import pack_activation, pack_dense
from runtime.kernels import KERNELS, Step

N, C, H, W, COUT, K = 1, 256, 14, 14, 256, 3
MACS = N * COUT * H * W * C * K * K


def onnx_session(w: np.ndarray, threads: int, spin: bool = True) -> ort.InferenceSession:
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[K, K], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, COUT, H, W])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def build(op: str, attrs: dict, ins: list, consts: set[int], outs: list[tuple[tuple, str]]):
    step = Step(name=op, op=op, attrs=attrs,
                in_shapes=[None if a is None else tuple(a.shape) for a in ins],
                in_dtypes=[None if a is None else str(a.dtype) for a in ins],
                out_shapes=[s for s, _ in outs], out_dtypes=[d for _, d in outs],
                consts=[a if i in consts else None for i, a in enumerate(ins)])
    return KERNELS[op](step), [np.empty(s, d) for s, d in outs]


def bnnc_layer(x: np.ndarray, w: np.ndarray, output: str):
    wb, _ = pack_dense(w)
    xb, _ = pack_activation(x)
    attrs = dict(kernel_shape=[K, K], pads=[1, 1, 1, 1], cin=C, cout=COUT, pad_value=0, output=output, macs=MACS)
    if output == "float":
        tail = [np.ones(COUT, np.float32), np.zeros(COUT, np.float32)]
        outs = [((N, COUT, H, W), "float32")]
    else:
        rule = np.tile(np.array([[0, -1, -1, 1, 1]], np.int32), (COUT, 1))  # sign(s), s = 0 -> +1
        tail, outs = [rule], [((N, H, W, COUT // 64), "uint64")]
    conv, conv_out = build("bnnc.BinaryConv", attrs, [xb, None, wb, None, *tail], {2, 4, 5}, outs)
    binz, binz_out = build("bnnc.Binarize", dict(zero=1), [x], set(), [(xb.shape, "uint64")])
    return conv, conv_out, xb, binz, binz_out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def summary(ts: list[float]) -> dict:
    ms = [t * 1e3 for t in ts]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--output", choices=["float", "bits"], default="float", help="BinaryConv output stage")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--ort-spin", action="store_true", help="let onnxruntime's pool threads spin-wait")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), size=(N, C, H, W))
    w = rng.choice(np.array([-1, 1], np.int8), size=(COUT, C, K, K))
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    sess = onnx_session(w, args.threads, spin=args.ort_spin or args.threads == 1)
    conv, conv_out, xb, binz, binz_out = bnnc_layer(x, w, args.output)

    conv_in = [xb, None, None, None, None, None]
    binz_in = [x]
    fns = {
        "onnxruntime": lambda: sess.run(None, {"x": x}),
        "bnnc": lambda: conv.run(conv_in, conv_out),
        "bnnc binarize+conv": lambda: (binz.run(binz_in, binz_out), conv.run([binz_out[0]] + conv_in[1:], conv_out)),
    }
    for _ in range(args.warmup):
        for f in fns.values():
            f()
    if args.output == "float":  # the same numbers: zero padding is exact, s is the float conv
        np.testing.assert_array_equal(conv_out[0], sess.run(None, {"x": x})[0])
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, f in fns.items():
            times[k].append(timed(f))

    res = {k: summary(v) for k, v in times.items()}
    base = res["onnxruntime"]["median_ms"]
    for r in res.values():
        r["speedup"] = base / r["median_ms"]
        r["gmacs"] = MACS / (r["median_ms"] * 1e-3) / 1e9
    report = {"layer": f"conv {C}->{COUT} {K}x{K} pads 1, {H}x{W}, batch {N}", "macs": MACS,
              "threads": args.threads, "reps": args.reps, "output": args.output,
              "ort_spinning": args.ort_spin or args.threads == 1, "results": res}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['layer']}, {MACS / 1e6:.1f} M MACs, threads {args.threads}, {args.reps} reps, "
          f"output {args.output}")
    print(f"{'':20s} {'median ms':>10s} {'min':>8s} {'max':>8s} {'speedup':>8s} {'GMAC/s':>8s}")
    for k, r in res.items():
        print(f"{k:20s} {r['median_ms']:10.3f} {r['min_ms']:8.3f} {r['max_ms']:8.3f} {r['speedup']:7.2f}x "
              f"{r['gmacs']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
