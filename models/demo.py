"""bnnc demo: compile the trained digits BNN, run it next to onnxruntime, compare, show the size gain.

Run by ``make demo`` with the project venv (bnnc, numpy, onnxruntime; no PyTorch):

    python models/demo.py [--out DIR] [--threads N] [--show K]

Compiles models/digits_bnn.onnx with ``bnnc.compile_model`` (into a temporary directory unless
--out is given), runs the artifact with ``runtime.InferenceSession`` on the held-out digits in
models/digits_test.npz, runs onnxruntime on the same inputs, and prints the first few samples side
by side, both accuracies, how many predictions agree, the largest output difference and the size of
the artifact against the fp32 ONNX file. Exit code 1 if any prediction differs, 2 on a bnnc error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

import bnnc
from runtime import BnncError, InferenceSession

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_PATH = os.path.join(HERE, "digits_bnn.onnx")
TEST_PATH = os.path.join(HERE, "digits_test.npz")
RECORD_PATH = os.path.join(HERE, "digits_bnn.json")
TIMED_IMAGES = 64


def rule(title: str = "") -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)) if title else "=" * 80)


def fmt_bytes(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB"


def compile_artifact(out_dir: str) -> tuple[bnnc.CompileResult, float]:
    t0 = time.perf_counter()
    res = bnnc.compile_model(ONNX_PATH, os.path.join(out_dir, "digits_bnn.bnn"))
    return res, time.perf_counter() - t0


def run_bnnc(path: str, x: np.ndarray, threads: int | None) -> tuple[np.ndarray, float, float]:
    """Outputs over ``x``, the seconds of that first call (it may JIT-compile), and the seconds per
    image of a second call over at most TIMED_IMAGES images (whose outputs must repeat exactly)."""
    sess = InferenceSession(path, threads=threads)
    name = sess.get_inputs()[0].name
    t0 = time.perf_counter()
    out = sess.run(None, {name: x})[0]
    t1 = time.perf_counter()
    sub = x[:TIMED_IMAGES]
    again = sess.run(None, {name: sub})[0]
    t2 = time.perf_counter()
    if not np.array_equal(out[:len(sub)], again):
        raise BnncError("the bnnc runtime returned different outputs for the same inputs on two runs")
    return out, t1 - t0, (t2 - t1) / len(sub)


def run_onnxruntime(x: np.ndarray, threads: int | None) -> tuple[np.ndarray, float]:
    """Outputs over ``x`` and the seconds per image of a second call over at most TIMED_IMAGES images."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(ONNX_PATH, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = sess.run(None, {name: x})[0]
    sub = x[:TIMED_IMAGES]
    t0 = time.perf_counter()
    sess.run(None, {name: sub})
    return out, (time.perf_counter() - t0) / len(sub)


def print_samples(y: np.ndarray, ours: np.ndarray, ref: np.ndarray, k: int) -> None:
    rule(f"first {k} test samples: logits from bnnc and onnxruntime")
    for i in range(min(k, len(y))):
        mark = "ok" if ours[i].argmax() == ref[i].argmax() else "DIFFERENT"
        print(f"sample {i}: label {y[i]}, predicted bnnc {ours[i].argmax()} / onnxruntime {ref[i].argmax()} "
              f"[{mark}], max |diff| {np.abs(ours[i] - ref[i]).max():.2e}")
        print("  bnnc        " + " ".join(f"{v:7.3f}" for v in ours[i]))
        print("  onnxruntime " + " ".join(f"{v:7.3f}" for v in ref[i]))


def print_accuracy(y: np.ndarray, ours: np.ndarray, ref: np.ndarray) -> int:
    """Print accuracies and agreement; return the number of predictions that differ."""
    rule("accuracy on the held-out digits")
    p_ours, p_ref = ours.argmax(1), ref.argmax(1)
    n = len(y)
    print(f"test samples                 {n}")
    print(f"accuracy bnnc                {(p_ours == y).mean():.4f}")
    print(f"accuracy onnxruntime         {(p_ref == y).mean():.4f}")
    if os.path.exists(RECORD_PATH):
        with open(RECORD_PATH) as f:
            rec = json.load(f)
        print(f"accuracy PyTorch (recorded)  {rec.get('test_accuracy_torch', float('nan')):.4f}")
    same = int((p_ours == p_ref).sum())
    print(f"identical predictions        {same}/{n}" + ("" if same == n else "   <-- MISMATCH"))
    diff = np.abs(ours - ref)
    print(f"max |output difference|      {diff.max():.3e} (largest |logit| {np.abs(ref).max():.2f})")
    return n - same


def layer_table(res: bnnc.CompileResult) -> list[dict] | None:
    """The per-layer summary the binary passes leave in the manifest, or None when there is none."""
    raw = res.manifest.get("metadata", {}).get("bnnc.layers")
    if not raw:
        return None
    try:
        layers = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return None
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else None


def print_sizes(res: bnnc.CompileResult) -> None:
    rule("size")
    onnx_bytes = os.path.getsize(ONNX_PATH)
    print(f"fp32 ONNX file      {fmt_bytes(onnx_bytes):>12}   models/digits_bnn.onnx")
    print(f"bnnc artifact       {fmt_bytes(res.artifact_bytes):>12}   {os.path.basename(res.path)}")
    ratio = onnx_bytes / res.artifact_bytes
    note = "" if ratio > 1 else "   (larger: this build of bnnc did not pack the binary layers)"
    print(f"reduction           {ratio:11.1f}x{note}")
    layers = layer_table(res)
    if layers is None:
        print("(this build of bnnc records no per-layer table: manifest metadata 'bnnc.layers' is absent or unreadable)")
        return
    print(f"\n{'layer':<32} {'mode':<14} {'fp32 weights':>14} {'packed':>12} {'ratio':>7}")
    for x in layers:
        w, p = x.get("weight_bytes"), x.get("packed_weight_bytes")
        ratio = f"{w / p:6.1f}x" if isinstance(w, int) and isinstance(p, int) and p > 0 else "-"
        w_s = fmt_bytes(w) if isinstance(w, int) else "-"
        p_s = fmt_bytes(p) if isinstance(p, int) else "-"
        print(f"{str(x.get('name', '?'))[:32]:<32} {str(x.get('mode', '?'))[:14]:<14} {w_s:>14} {p_s:>12} {ratio:>7}")
    ws = [x.get("weight_bytes") for x in layers]
    ps = [x.get("packed_weight_bytes") for x in layers]
    if all(isinstance(v, int) for v in ws + ps) and sum(ps) > 0:
        print(f"{'total':<47} {fmt_bytes(sum(ws)):>14} {fmt_bytes(sum(ps)):>12} {sum(ws) / sum(ps):6.1f}x")


def demo(out_dir: str, threads: int | None, show: int) -> int:
    data = np.load(TEST_PATH)
    x, y = np.ascontiguousarray(data["x_test"], dtype=np.float32), data["y_test"]
    rule("bnnc demo: a binarized CNN trained on scikit-learn digits")
    print(f"model   models/digits_bnn.onnx (8x8 grey digits, {len(y)} held-out test images)")
    res, t_compile = compile_artifact(out_dir)
    kinds = sorted({n.op_type for n in res.model.graph})
    print(f"compiled in {t_compile:.2f} s -> {res.path}")
    print(f"kernels {len(res.model.graph)}: {', '.join(kinds)}")
    ours, t_first, t_second = run_bnnc(res.path, x, threads)
    ref, t_ort = run_onnxruntime(x, threads)
    print_samples(y, ours, ref, show)
    differ = print_accuracy(y, ours, ref)
    print_sizes(res)
    rule("time (indicative only: one run each; `bnnc bench` measures properly)")
    b = min(TIMED_IMAGES, len(y))
    print(f"{f'bnnc, first call, {len(y)} images':<34} {t_first:9.3f} s   (includes Numba compilation unless cached)")
    print(f"{f'bnnc, second call, {b} images':<34} {t_second * 1e3:9.3f} ms per image")
    print(f"{f'onnxruntime, {b} images':<34} {t_ort * 1e3:9.3f} ms per image")
    rule()
    if differ:
        print(f"FAIL: {differ} of {len(y)} predictions differ between bnnc and onnxruntime")
        return 1
    print(f"OK: bnnc and onnxruntime agree on all {len(y)} predictions")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="keep the artifact in this directory (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=None, help="threads for bnnc and onnxruntime (default: all)")
    ap.add_argument("--show", type=int, default=5, help="how many samples to print side by side (default: 5)")
    args = ap.parse_args(argv)
    try:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            return demo(args.out, args.threads, args.show)
        with tempfile.TemporaryDirectory() as d:
            return demo(d, args.threads, args.show)
    except BnncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
