"""Benchmark: the non-conv float kernels as emitted plan code against the step-by-step interpreter
and onnxruntime, one small ONNX graph per case.

Each case is compiled without passes (so the kernels measured are the ops as written) and run by
one ``runtime.InferenceSession`` twice: through its plan function (one generated @njit function)
and through the interpreter (``_execute``: Python calls one kernel after the other), which is
what a session falls back to when some kernel cannot emit. onnxruntime runs the same graph.
Same thread count for all, one process, interleaved, after warm-up; medians in milliseconds and
the ratios interpreter / emitted and onnxruntime / emitted (above 1: the emitted code is faster).

    python benchmarks/bench_emitted_ops.py [--threads N] [--reps 50] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
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

I64 = np.int64


def n(op, ins, out, **attrs):
    return helper.make_node(op, ins, [out], **attrs)


def soup(c: int, hw: int):
    """A dozen small layout and pooling ops, as in the head and tail of small networks."""
    nodes = [
        n("Pad", ["x", "pads"], "p"), n("MaxPool", ["p"], "m", kernel_shape=[3, 3], strides=[2, 2]),
        n("Transpose", ["m"], "t", perm=[0, 2, 3, 1]), n("Transpose", ["t"], "u", perm=[0, 3, 1, 2]),
        n("Concat", ["u", "m"], "c", axis=1), n("Slice", ["c", "s0", "s1", "s2"], "s"),
        n("ReduceMean", ["s", "hw"], "r", keepdims=1), n("Mul", ["s", "r"], "q"),
        n("AveragePool", ["q"], "a", kernel_shape=[2, 2], strides=[2, 2]), n("GlobalMaxPool", ["a"], "g"),
        n("Flatten", ["g"], "f"), n("Softmax", ["f"], "y"),
    ]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64), "s0": np.array([0], I64), "s1": np.array([c], I64),
             "s2": np.array([1], I64), "hw": np.array([2, 3], I64)}
    return nodes, (1, c, hw, hw), inits


CASES = {
    "soup of 12 ops 16x8x8": soup(16, 8),
    "soup of 12 ops 64x32x32": soup(64, 32),
    "transpose NCHW->NHWC 64x56x56": ([n("Transpose", ["x"], "y", perm=[0, 2, 3, 1])], (1, 64, 56, 56), {}),
    "transpose NCHW->NHWC 256x64x64": ([n("Transpose", ["x"], "y", perm=[0, 2, 3, 1])], (1, 256, 64, 64), {}),
    "transpose NHWC->NCHW 8x8x512": ([n("Transpose", ["x"], "y", perm=[0, 3, 1, 2])], (1, 8, 8, 512), {}),
    "concat self 64x28x28": ([n("Concat", ["x", "x"], "y", axis=1)], (1, 64, 28, 28), {}),
    "pad 1 64x56x56": ([n("Pad", ["x", "pads"], "y")], (1, 64, 56, 56),
                       {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], I64)}),
    "maxpool 3x3 s2 64x112x112": ([n("MaxPool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                                  (1, 64, 112, 112), {}),
    "reducemean hw 256x14x14": ([n("ReduceMean", ["x", "hw"], "y", keepdims=0)], (1, 256, 14, 14),
                                {"hw": np.array([2, 3], I64)}),
    "reducesum c 64x56x56": ([n("ReduceSum", ["x", "c"], "y")], (1, 64, 56, 56), {"c": np.array([1], I64)}),
    "layernorm 197x192": ([n("LayerNormalization", ["x", "g"], "y")], (1, 197, 192),
                          {"g": np.ones(192, np.float32)}),
    "gelu 197x768": ([n("Gelu", ["x"], "y")], (1, 197, 768), {}),
}


def model_of(nodes, x_shape, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def run_case(nodes, x_shape, inits, threads: int, reps: int, warmup: int) -> dict[str, float]:
    model = model_of(nodes, x_shape, inits)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        onnx.save(model, path)
        artifact = bnnc.compile_model(path, os.path.join(d, "m.bnn"), passes=[]).path
        emitted = InferenceSession(artifact, threads=threads)
        interpreted = InferenceSession(artifact, threads=threads)
    if emitted._plan is None:
        raise SystemExit(f"a kernel of {[nd.op_type for nd in nodes]} does not emit: nothing to compare")
    interpreted._plan = None  # the fallback: kernels called one by one from Python
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ref = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fns = {"onnxruntime": lambda: ref.run(None, {"x": x}), "interpreted": lambda: interpreted.run(None, {"x": x}),
           "emitted": lambda: emitted.run(None, {"x": x})}
    want = fns["onnxruntime"]()[0]
    for k in ("interpreted", "emitted"):
        got = fns[k]()[0]
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max()))):
            raise SystemExit(f"{k} differs from onnxruntime")
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(reps):
        for k, f in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    args = ap.parse_args(argv)
    print(f"threads {args.threads}, {args.reps} interleaved reps, medians in ms")
    print(f"{'case':34s} {'ort':>8s} {'interp':>8s} {'emitted':>8s} {'interp/em':>9s} {'ort/em':>7s}")
    for name, (nodes, x_shape, inits) in CASES.items():
        if args.only not in name:
            continue
        r = run_case(nodes, x_shape, inits, args.threads, args.reps, args.warmup)
        print(f"{name:34s} {r['onnxruntime']:8.3f} {r['interpreted']:8.3f} {r['emitted']:8.3f} "
              f"{r['interpreted'] / r['emitted']:8.2f}x {r['onnxruntime'] / r['emitted']:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
