"""Benchmark: bnnc's float kernels against onnxruntime, one small ONNX graph per case.

Each case (a BNN stem, a 1x1 convolution, a depthwise convolution, a pool, the classifier Gemm,
BatchNorm, and tiny layers where launch overhead dominates) is compiled with bnnc's default
pipeline (so Conv + Relu becomes bnnc.FusedConv, as in real models) and run through
``runtime.InferenceSession.run``; onnxruntime runs the same ONNX graph. Both use the same thread
count, in one process, interleaved, after warm-up. We print medians, min/max and the ratio
onnxruntime median / bnnc median (above 1: bnnc is faster).

onnxruntime's pool threads spin-wait after each run by default and then take the cores from
bnnc's threads when both run interleaved in one process; with more than one thread that
spinning is turned off unless --ort-spin is given.

    python benchmarks/bench_float_ops.py [--threads N] [--reps 30] [--only SUBSTRING] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import bnnc
from runtime import InferenceSession


def conv(name, x, m, k, s=1, p=None, g=1, act="Relu"):
    """A Conv (+ activation) case: x = (N, C, H, W), m output channels, k x k kernel."""
    p = [k // 2] * 4 if p is None else p
    c = x[1]
    w = np.random.default_rng(1).standard_normal((m, c // g, k, k)).astype(np.float32) * 0.1
    b = np.random.default_rng(2).standard_normal(m).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if act else "y"], kernel_shape=[k, k],
                              strides=[s, s], pads=p, group=g)]
    if act:
        nodes.append(helper.make_node(act, ["c"], ["y"]))
    return name, nodes, x, {"w": w, "b": b}


def node(name, op, x, inits=None, **attrs):
    inputs = ["x"] + list(inits or {})
    return name, [helper.make_node(op, inputs, ["y"], **attrs)], x, dict(inits or {})


def bn_inits(c):
    r = np.random.default_rng(3)
    return {"s": r.random(c, np.float32) + 0.5, "bb": r.standard_normal(c).astype(np.float32),
            "mu": r.standard_normal(c).astype(np.float32), "var": r.random(c, np.float32) + 0.5}


CASES = [
    conv("stem xnornet 3->12 11x11 s4 224", (1, 3, 224, 224), 12, 11, 4, [3, 3, 4, 4]),
    conv("stem 3->64 7x7 s2 224", (1, 3, 224, 224), 64, 7, 2),
    conv("stem 3->32 3x3 s2 224", (1, 3, 224, 224), 32, 3, 2),
    conv("stem 3->64 3x3 s2 224", (1, 3, 224, 224), 64, 3, 2),
    conv("stem 3->32 3x3 32x32", (1, 3, 32, 32), 32, 3),
    conv("stem 3->64 3x3 32x32", (1, 3, 32, 32), 64, 3),
    conv("1x1 64->128 56x56", (1, 64, 56, 56), 128, 1, act=None),
    conv("1x1 128->256 28x28", (1, 128, 28, 28), 256, 1, act=None),
    conv("1x1 256->512 s2 14x14", (1, 256, 14, 14), 512, 1, 2, act=None),
    conv("1x1 512->512 7x7", (1, 512, 7, 7), 512, 1, act=None),
    conv("dw 3x3 64 56x56", (1, 64, 56, 56), 64, 3, g=64),
    conv("dw 3x3 s2 128 56x56", (1, 128, 56, 56), 128, 3, 2, g=128),
    node("maxpool 3x3 s2 64x112x112", "MaxPool", (1, 64, 112, 112), kernel_shape=[3, 3], strides=[2, 2],
         pads=[1, 1, 1, 1]),
    node("maxpool 2x2 s2 64x32x32", "MaxPool", (1, 64, 32, 32), kernel_shape=[2, 2], strides=[2, 2]),
    node("maxpool 3x3 s2 12x56x56", "MaxPool", (1, 12, 56, 56), kernel_shape=[3, 3], strides=[2, 2]),
    node("avgpool 2x2 s2 64x56x56", "AveragePool", (1, 64, 56, 56), kernel_shape=[2, 2], strides=[2, 2]),
    node("globalavg 512x7x7", "GlobalAveragePool", (1, 512, 7, 7)),
    node("globalavg 128x8x8", "GlobalAveragePool", (1, 128, 8, 8)),
    node("gemm 512->1000", "Gemm", (1, 512), {"fc": np.random.default_rng(4).standard_normal((1000, 512))
                                              .astype(np.float32)}, transB=1),
    node("batchnorm 64x56x56", "BatchNormalization", (1, 64, 56, 56), bn_inits(64)),
    node("relu 64x56x56", "Relu", (1, 64, 56, 56)),
    node("tiny batchnorm 32x4x4", "BatchNormalization", (1, 32, 4, 4), bn_inits(32)),
    node("tiny relu 64x8x8", "Relu", (1, 64, 8, 8)),
    conv("tiny conv 16->16 3x3 8x8", (1, 16, 8, 8), 16, 3),
    node("tiny maxpool 2x2 32x8x8", "MaxPool", (1, 32, 8, 8), kernel_shape=[2, 2], strides=[2, 2]),
]


def model_of(nodes, x_shape, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_case(nodes, x_shape, inits, threads: int, reps: int, warmup: int, spin: bool) -> dict:
    model = model_of(nodes, x_shape, inits)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        onnx.save(model, path)
        sess = InferenceSession(bnnc.compile_model(path, os.path.join(d, "m.bnn")).path, threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fns = {"onnxruntime": lambda: ref.run(None, {"x": x}), "bnnc": lambda: sess.run(None, {"x": x})}
    want, got = fns["onnxruntime"]()[0], fns["bnnc"]()[0]
    err = float(np.max(np.abs(want - got)) / max(1.0, float(np.max(np.abs(want)))))
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(reps):
        order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]
        for k, f in order:
            times[k].append(timed(f))
    res = {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "max_ms": max(v) * 1e3}
           for k, v in times.items()}
    res["ratio"] = res["onnxruntime"]["median_ms"] / res["bnnc"]["median_ms"]
    res["max_rel_error"] = err
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--ort-spin", action="store_true", help="let onnxruntime's pool threads spin-wait")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    spin = args.ort_spin or args.threads == 1
    results = {}
    if not args.json:
        print(f"threads {args.threads}, {args.reps} interleaved reps, onnxruntime spinning {'on' if spin else 'off'}")
        print(f"{'case':36s} {'ort ms':>9s} {'bnnc ms':>9s} {'ratio':>7s}  (bnnc min/max)")
    for name, nodes, x_shape, inits in CASES:
        if args.only not in name:
            continue
        r = run_case(nodes, x_shape, inits, args.threads, args.reps, args.warmup, spin)
        results[name] = r
        if not args.json:
            b = r["bnnc"]
            print(f"{name:36s} {r['onnxruntime']['median_ms']:9.3f} {b['median_ms']:9.3f} {r['ratio']:6.2f}x "
                  f" ({b['min_ms']:.3f}/{b['max_ms']:.3f})" + ("  MISMATCH" if r["max_rel_error"] > 1e-3 else ""))
    if args.json:
        print(json.dumps({"threads": args.threads, "reps": args.reps, "ort_spinning": spin, "results": results},
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
