"""``bnnc bench``: onnxruntime and bnnc side by side on one model, in one process, interleaved.

Both run with the same thread count after warm-up, in alternating blocks of a few back-to-back
runs (``BLOCK``), so drift and noise on a shared machine hit both alike, while each engine is
timed in the steady state of an inference loop: right after the other engine ran, its thread
pool is asleep and its caches cold, a cost a deployed model does not pay on every inference (the
first run of each block pays it; the median over all runs is the steady-state time). Medians,
min/max and the speedup ratio (onnxruntime median / bnnc median) are reported, then each
engine's peak memory, measured in a fresh process per engine (``bnnc.memory`` says how).
``interleave`` and ``load_engines`` are shared with the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from bnnc.loader import load_model
from bnnc.memory import format_memory, peak_memory
from bnnc.onnxrt import session
from bnnc.verify import _reference_model, random_inputs
from runtime import InferenceSession

BLOCK = 5  # back-to-back runs of one engine before the other runs


def _stats(ts: list[float]) -> dict:
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3}


def ort_session(model: bytes, threads: int) -> ort.InferenceSession:
    """onnxruntime on the CPU with ``threads`` intra-op threads and its graph optimizations, as
    ``bnnc bench`` times it."""
    return session(model, threads, optimize=True)


@dataclass
class Engines:
    """Both engines loaded on one model, with the random inputs they are timed on."""

    feeds: dict[str, np.ndarray]
    shapes: dict[str, list[int]]
    manifest: dict  # the compiled artifact's manifest
    ours: InferenceSession
    theirs: ort.InferenceSession
    reference: onnx.ModelProto  # the model onnxruntime runs (QONNX ops lowered)


def load_engines(onnx_path: str, threads: int = 1, input_shapes: dict | None = None, batch: int = 1,
                 artifact_dir: str | None = None) -> Engines:
    """Compile ``onnx_path`` (into ``artifact_dir``, else a temporary folder) and open it in both
    engines with ``threads`` threads."""
    import bnnc

    feeds = random_inputs(load_model(onnx_path, input_shapes), batch)
    shapes = dict(input_shapes or {})
    shapes.update({k: list(v.shape) for k, v in feeds.items()})
    with tempfile.TemporaryDirectory() as d:
        res = bnnc.compile_model(onnx_path, os.path.join(artifact_dir or d, "m.bnn"), input_shapes=shapes)
        sess = InferenceSession(res.path, threads=threads)
    ref = _reference_model(onnx_path, shapes, [])
    return Engines(feeds, shapes, res.manifest, sess, ort_session(ref.SerializeToString(), threads), ref)


def interleave(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 3,
               progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Seconds of ``repeat`` runs of every function, in blocks of ``BLOCK`` back-to-back runs of
    one function at a time; the order of the functions rotates from one round to the next. Each
    block starts with one untimed run: both engines' idle workers spin a little after a run, and
    that would be charged to the first run of the other engine."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    while len(times[order[0]]) < repeat:
        for k in order:
            acc, fn = times[k], fns[k]
            fn()
            for _ in range(min(BLOCK, repeat - len(acc))):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        order = order[1:] + order[:1]
        if progress is not None:
            progress(len(times[order[0]]), repeat)
    return times


def bench(onnx_path: str, threads: int = 1, repeat: int = 30, warmup: int = 3,
          input_shapes: dict | None = None, batch: int = 1, progress=None, profile: bool = False,
          memory: bool = True) -> dict:
    """Time bnnc and onnxruntime on random inputs; with ``profile``, also the median time of
    every kernel of bnnc's plan over ``repeat`` more runs (``InferenceSession.profile``); with
    ``memory``, each engine's peak memory (``bnnc.memory``)."""
    with tempfile.TemporaryDirectory() as d:
        e = load_engines(onnx_path, threads, input_shapes, batch, artifact_dir=d)
        feeds = e.feeds
        times = interleave({"bnnc": lambda: e.ours.run(None, feeds), "onnxruntime": lambda: e.theirs.run(None, feeds)},
                           repeat, warmup, progress)
        ours, theirs = times["bnnc"], times["onnxruntime"]
        out = np.asarray(e.ours.run(None, feeds)[0])
        agree = float(np.max(np.abs(out - np.asarray(e.theirs.run(None, feeds)[0])))) if out.size else 0.0
        result = {
            "model": onnx_path, "threads": threads, "repeat": repeat, "batch": batch,
            "inputs": {k: list(v.shape) for k, v in feeds.items()},
            "bnnc": _stats(ours), "onnxruntime": _stats(theirs),
            "speedup": statistics.median(theirs) / statistics.median(ours),
            "max_abs_output_difference": agree,
        }
        if profile:
            result["profile"] = [{"name": n, "op": op, "median_ms": t * 1e3} for n, op, t in e.ours.profile(feeds, repeat)]
        if memory:
            result["memory"] = peak_memory(os.path.join(d, "m.bnn"), e.reference, feeds, threads)
    return result


def format_bench(r: dict) -> str:
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in r["inputs"].items())
    lines = [f"{r['model']}: inputs {shapes}, {r['threads']} thread(s), {r['repeat']} interleaved runs"]
    for k in ("onnxruntime", "bnnc"):
        s = r[k]
        lines.append(f"  {k:<12} median {s['median_ms']:9.3f} ms   min {s['min_ms']:9.3f}   max {s['max_ms']:9.3f}")
    lines.append(f"  speedup      {r['speedup']:.2f}x (onnxruntime median / bnnc median)")
    if "memory" in r:
        lines += format_memory(r["memory"])
    if "profile" in r:
        lines += format_profile(r["profile"])
    return "\n".join(lines)


def format_profile(rows: list[dict], top: int = 15) -> list[str]:
    """The ``top`` slowest kernels of the plan (median ms, share of the kernels' sum), the rest
    summed in one line."""
    total = sum(r["median_ms"] for r in rows) or 1.0
    ranked = sorted(rows, key=lambda r: -r["median_ms"])
    width = max([len(r["name"]) for r in ranked[:top]] + [6])
    lines = ["", f"bnnc kernels, medians (sum {total:.3f} ms; the sum of medians, not a run's time):",
             f"  {'kernel':<{width}}  {'op':<22} {'ms':>9} {'share':>6}"]
    for r in ranked[:top]:
        lines.append(f"  {r['name']:<{width}}  {r['op']:<22} {r['median_ms']:>9.3f} {r['median_ms'] / total:>6.1%}")
    rest = ranked[top:]
    if rest:
        t = sum(r["median_ms"] for r in rest)
        lines.append(f"  {f'({len(rest)} more)':<{width}}  {'':<22} {t:>9.3f} {t / total:>6.1%}")
    return lines
