"""Benchmark: bnnc's float convolutions (Conv, bnnc.FusedConv, bnnc.BinaryWeightConv) and dense
layers against onnxruntime, layer by layer.

Each case is one layer at the shape it has in a real network (the Bi-Real Net 18 stem and 1x1
shortcuts, the XNOR-Net stems, the convs of the corpus models, the binary-weight convs of
../shared/corpus/torch_bwn_legacy and models/bwn.onnx, classifier Gemms), written as a one-node
ONNX graph (plus its activation) and compiled with bnnc's default pipeline, so a Conv with +-alpha weights becomes
bnnc.BinaryWeightConv and Conv + Relu becomes bnnc.FusedConv, as in real models. Both engines
run on the same input in one process, same thread count, interleaved after warm-up (blocks of 3
back-to-back runs per engine, the order rotating), and we print medians and the ratio
onnxruntime / bnnc (above 1: bnnc is faster) of two measures:

* ``run``: a whole ``session.run`` (feed checks, the output returned as a new array), wall-clock,
  and the ratio of the process's CPU time per run (on a shared machine the CPU time of a
  one-thread run is the steadier measure of the work done);
* ``layer``: the layer's own time, as in a whole model: onnxruntime's per-node kernel times from
  its profiler, summed over the nodes of one run (its NCHWc conv and the reorder after it), and
  bnnc's plan function called alone (the output stays in the session's buffer), timed from
  compiled code around the call as onnxruntime's profiler times its kernels (the call's way in
  from Python, about a microsecond, is paid once per inference, not per layer); with the ratio
  of medians, the ratio of the fastest runs (``best``: on a shared machine the steadier figure
  for kernel work, which other processes only ever slow down).

``--steps`` adds bnnc's step-by-step interpreter (the session built as if some kernel could not
emit) to the run measure.

    python benchmarks/bench_float_conv.py [--threads N] [--reps 10] [--only SUBSTRING] [--steps] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from numba import njit
from onnx import TensorProto, helper, numpy_helper

import bnnc
import runtime.session
from runtime import InferenceSession
from runtime.program import call
from runtime.threads import limit_threads


def conv(name, x, m, k, s=1, p=None, act="", binary=False, g=1):
    """A Conv (+ activation) case: x = (N, C, H, W), m output channels, k x k kernel; ``binary``:
    weights +-alpha per output channel (bnnc makes it a binary-weight conv)."""
    p = [k // 2] * 4 if p is None else p
    r = np.random.default_rng(1)
    w = r.standard_normal((m, x[1] // g, k, k)).astype(np.float32) * 0.1
    if binary:
        w = (np.where(w >= 0, 1.0, -1.0) * r.uniform(0.05, 0.2, (m, 1, 1, 1))).astype(np.float32)
    b = r.standard_normal(m).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c" if act else "y"], kernel_shape=[k, k],
                              strides=[s, s], pads=p, group=g)]
    if act:
        nodes.append(helper.make_node(act, ["c"], ["y"]))
    return name, nodes, x, {"w": w, "b": b}


def gemm(name, n, k, m):
    w = np.random.default_rng(4).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(5).standard_normal(m).astype(np.float32)
    return name, [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], (n, k), {"w": w, "b": b}


CASES = [
    conv("birealnet stem 3->64 7x7 s2 224", (1, 3, 224, 224), 64, 7, 2),
    conv("xnornet stem 3->12 11x11 s4 224", (1, 3, 224, 224), 12, 11, 4, [3, 3, 4, 4], act="Relu"),
    conv("1x1 64->128 28x28", (1, 64, 28, 28), 128, 1),
    conv("1x1 128->256 14x14", (1, 128, 14, 14), 256, 1),
    conv("1x1 256->512 7x7", (1, 256, 7, 7), 512, 1),
    conv("1x1 64->128 s2 56x56", (1, 64, 56, 56), 128, 1, 2),
    conv("1x1 64->256 56x56", (1, 64, 56, 56), 256, 1),
    conv("1x1 128->128 16x16 b8", (8, 128, 16, 16), 128, 1),
    conv("5x5 1->64 28x28 b8 tanh", (8, 1, 28, 28), 64, 5, p=[0, 0, 0, 0], act="Tanh"),
    conv("xnornet-torch 3->64 5x5 32x32 b8", (8, 3, 32, 32), 64, 5),
    conv("bwn first 3->32 3x3 32x32 b8", (8, 3, 32, 32), 32, 3, act="Relu"),
    conv("cnv first 3->64 3x3 valid 32x32", (1, 3, 32, 32), 64, 3, p=[0, 0, 0, 0]),
    conv("bwn binary-weight 32->64 32x32 b8", (8, 32, 32, 32), 64, 3, binary=True),
    conv("bwn binary-weight 64->128 16x16 b8", (8, 64, 16, 16), 128, 3, binary=True),
    conv("bwn binary-weight 128->128 8x8 b8", (8, 128, 8, 8), 128, 3, binary=True),
    conv("models/bwn binary-weight 32->64 32x32", (1, 32, 32, 32), 64, 3, binary=True),
    conv("models/bwn binary-weight 64->64 16x16", (1, 64, 16, 16), 64, 3, binary=True),
    conv("models/bwn binary-weight 64->128 8x8", (1, 64, 8, 8), 128, 3, binary=True),
    conv("resnete stem 3->16 3x3 64x64 b4", (4, 3, 64, 64), 16, 3),
    conv("torch bireal stem 3->16 7x7 s2 64x64 b4", (4, 3, 64, 64), 16, 7, 2),
    conv("resnete 1x1 16->32 32x32 b4", (4, 16, 32, 32), 32, 1),
    conv("quicknet stem 3->8 3x3 s2 32x32", (1, 3, 32, 32), 8, 3, 2, [0, 0, 1, 1]),
    conv("3x3 64->64 56x56", (1, 64, 56, 56), 64, 3, act="Relu"),
    gemm("gemm 512->1000", 1, 512, 1000),
    gemm("gemm 1024->1024 b8", 8, 1024, 1024),
    gemm("gemm 128->1000 b4", 4, 128, 1000),
    gemm("gemm 512->1000 b4", 4, 512, 1000),
    gemm("gemm 512->1000 b2", 2, 512, 1000),
    gemm("gemm 256->256 b6", 6, 256, 256),
    gemm("gemm 512->1000 b3", 3, 512, 1000),
    gemm("gemm 512->1000 b8", 8, 512, 1000),
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


def sessions(model: onnx.ModelProto, threads: int, steps: bool):
    """(plan, steps) bnnc sessions of one model: the plan function, and the interpreter (None
    unless ``steps``)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        onnx.save(model, path)
        art = bnnc.compile_model(path, os.path.join(d, "m.bnn")).path
        new = InferenceSession(art, threads=threads)
        if not steps:
            return new, None
        keep = runtime.session.emittable
        runtime.session.emittable = lambda kernels: False
        try:
            old = InferenceSession(art, threads=threads)
        finally:
            runtime.session.emittable = keep
    return new, old


def ort_session(model: onnx.ModelProto, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if threads > 1:  # onnxruntime's spinning pool threads would starve bnnc's on a small machine
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_layer_times(trace: str) -> list[float]:
    """Seconds per run from an onnxruntime profile: the node kernel times inside each run."""
    with open(trace) as f:
        events = json.load(f)
    runs = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    return [sum(e["dur"] for e in nodes if a <= e["ts"] <= b) * 1e-6 for a, b in runs]


def _compiled_clock():
    """An njit function ``now(buf) -> ns`` reading the monotonic clock from compiled code
    (clock_gettime through ctypes, into the int64[2] ``buf``), or None where libc has none."""
    try:
        gettime = ctypes.CDLL(None).clock_gettime
    except (AttributeError, OSError):
        return None
    gettime.argtypes = [ctypes.c_int, ctypes.c_void_p]
    gettime.restype = ctypes.c_int
    clock = int(getattr(time, "CLOCK_MONOTONIC", 1))

    @njit
    def now(buf):
        gettime(clock, buf.ctypes.data)
        return buf[0] * 1_000_000_000 + buf[1]

    return now


_NOW = _compiled_clock()


def bare_plan(sess: InferenceSession, x: np.ndarray):
    """bnnc's plan function alone, on the session's own workspace (as one layer of a model),
    returning its seconds as timed from compiled code around the call: as onnxruntime's
    profiler times its kernels, without the call's way in from Python (a microsecond or more,
    paid once per inference by a whole model, not once per layer). Where no clock can be read
    from compiled code, the caller times the Python call (None)."""
    ws = sess._take_workspace()
    n = sess._nthreads
    args = [x, *sess._plan.consts, *ws.slots, *ws.plan_scratch]
    if _NOW is None:
        def run():  # BLAS's threads set only when the plan calls BLAS, as InferenceSession.run does
            with limit_threads(n, sess._plan_blas):
                call(sess._plan, [x], ws.slots, ws.plan_scratch)
        return run
    names = ", ".join(f"a{i}" for i in range(len(args)))
    scope = {"plan": sess._plan.function, "now": _NOW}
    exec(f"def inner(buf, {names}):\n    t = now(buf)\n    plan({names})\n    return now(buf) - t\n", scope)
    inner = njit(scope["inner"])
    buf = np.zeros(2, np.int64)

    def run():
        with limit_threads(n, sess._plan_blas):
            return inner(buf, *args) * 1e-9

    return run


def timed(fns: dict, reps: int, warmup: int) -> tuple[dict, dict]:
    """Wall-clock and CPU seconds of every run of every engine, interleaved in rotating blocks
    (the seconds a function returns, if it times itself: ``bare_plan``)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(reps):
        for k in names[i % len(names):] + names[:i % len(names)]:
            for _ in range(3):
                t, c = time.perf_counter(), time.process_time()
                inside = fns[k]()
                cpu[k].append(time.process_time() - c)
                wall[k].append(inside if isinstance(inside, float) else time.perf_counter() - t)
    return wall, cpu


def run_case(nodes, x_shape, inits, threads: int, reps: int, warmup: int, steps: bool) -> dict:
    model = model_of(nodes, x_shape, inits)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    new, old = sessions(model, threads, steps)
    ref = ort_session(model, threads)
    with tempfile.TemporaryDirectory() as d:
        prof = ort_session(model, threads, os.path.join(d, "ort"))
        fns = {"onnxruntime": lambda: ref.run(None, {"x": x}), "bnnc": lambda: new.run(None, {"x": x}),
               "ort layer": lambda: prof.run(None, {"x": x}), "bnnc layer": bare_plan(new, x)}
        if old is not None:
            fns["bnnc steps"] = lambda: old.run(None, {"x": x})
        want = fns["onnxruntime"]()[0]
        got = [new.run(None, {"x": x})[0]] + ([old.run(None, {"x": x})[0]] if old is not None else [])
        err = max(float(np.max(np.abs(want - g))) for g in got) / max(1.0, float(np.max(np.abs(want))))
        wall, cpu = timed(fns, reps, warmup)
        wall["ort layer"] = ort_layer_times(prof.end_profiling())[-len(wall["ort layer"]):]
    ms = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    best = {k: min(v) * 1e3 for k, v in wall.items()}
    cpu_ms = {k: statistics.median(v) * 1e3 for k, v in cpu.items() if "layer" not in k}
    out = {"ms": ms, "cpu_ms": cpu_ms, "ratio_run": ms["onnxruntime"] / ms["bnnc"],
           "cpu_ratio_run": cpu_ms["onnxruntime"] / cpu_ms["bnnc"], "ratio_layer": ms["ort layer"] / ms["bnnc layer"],
           "ratio_layer_best": best["ort layer"] / best["bnnc layer"],
           "ops": sorted({s["op"] for s in new.manifest["plan"]}), "emitted": new._plan is not None,
           "max_rel_error": err}
    if old is not None:
        out["ratio_steps"] = ms["onnxruntime"] / ms["bnnc steps"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10, help="rotations of 3-run blocks per engine")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--steps", action="store_true", help="also time bnnc's step-by-step interpreter")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    results = {}
    if not args.json:
        print(f"threads {args.threads}, {args.reps} rotations of 3-run blocks; medians; ratio = onnxruntime / bnnc")
        print(f"{'':38s} {'run: wall-clock ms':^24s} {'CPU':>6s} {'layer: kernels ms':^24s}")
        print(f"{'case':38s} {'ort':>8s} {'bnnc':>8s} {'ratio':>6s} {'ratio':>6s} {'ort':>8s} {'bnnc':>8s} {'ratio':>6s}"
              f" {'best':>6s}"
              + ("   steps" if args.steps else "") + "  ops")
    for name, nodes, x_shape, inits in CASES:
        if args.only not in name:
            continue
        r = run_case(nodes, x_shape, inits, args.threads, args.reps, args.warmup, args.steps)
        results[name] = r
        if not args.json:
            ms = r["ms"]
            flag = ("" if r["emitted"] else "  NOT EMITTED") + ("  MISMATCH" if r["max_rel_error"] > 1e-3 else "")
            steps = f" {r['ratio_steps']:6.2f}x" if args.steps else ""
            print(f"{name:38s} {ms['onnxruntime']:8.3f} {ms['bnnc']:8.3f} {r['ratio_run']:5.2f}x {r['cpu_ratio_run']:5.2f}x"
                  f" {ms['ort layer']:8.3f} {ms['bnnc layer']:8.3f} {r['ratio_layer']:5.2f}x {r['ratio_layer_best']:5.2f}x{steps}"
                  f"  {','.join(o.removeprefix('bnnc.') for o in r['ops'])}{flag}", flush=True)
    if args.json:
        print(json.dumps({"threads": args.threads, "reps": args.reps, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
