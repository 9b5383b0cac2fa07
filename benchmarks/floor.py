"""The machine's floor for a model, next to bnnc and onnxruntime on the whole model.

    python benchmarks/floor.py MODEL.onnx --threads N [--repeat R] [--json]

floor = (a) + (b), same thread count, everything timed in one run, interleaved (``bnnc bench``'s
method: blocks of back-to-back runs, the order rotating, medians):

(a) The float part, run alone by onnxruntime. bnnc compiles the model; its layer table (the one
    ``bnnc inspect --json`` prints) says which conv/linear layers are binary (``xnor``,
    ``ternary``) and which stay float (``float``, ``binary-weight``). The graph onnxruntime runs
    (QONNX ops lowered, as ``bnnc bench`` runs it) is then cut: every binary layer's node, and
    the nodes computing the real values its compiled step outputs (the BatchNorm and shortcut
    Add a Bi-Real block folds into its conv), are removed and their results become graph inputs
    fed with random data. Every other real value the compiled plan reads (a shortcut, the input
    of a Binarize) becomes a graph output, and the nodes no longer needed are dropped. What is
    left is what bnnc computes on real values outside its binary layers: the float layers,
    pools, a float chain after a layer; what is dropped is the binary layers with what bnnc
    fuses into them, their binarizers and weight subgraphs, and the BatchNorm/scale chains
    between a binary layer and the next binarizer, which bnnc folds into integer thresholds.
(b) Each binary layer as a bare XOR-popcount tile at its own shape (``xnor_tile.py``: P output
    pixels x ceil(K / 64) words x C output channels, data in cache, a plain Numba loop over
    ``llvm.ctpop``), one median per layer, summed. A tiny layer's tile repeats inside one call
    and its time is divided by the repeats, so the cost of a call is not counted as its work.
    Each layer's tile runs with the channels innermost and with the pixels innermost, and with
    N > 1 threads both serially and split over N threads (``prange``); the fastest counts (a
    narrow layer vectorises over pixels, a small layer is best left on one thread).
(c) bnnc and onnxruntime on the whole model, as ``bnnc bench`` runs them.

Printed: floor, bnnc, onnxruntime, efficiency = floor / bnnc, and per binary layer its shape,
tile time and rate in binary GMAC/s (K-bit dot products x K, not words); with ``--profile``
also bnnc's own median time for that layer (``InferenceSession.profile`` of single runs,
interleaved with the rest) and tile / bnnc, the fraction of the tile's rate the layer reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from bnnc.bench import Engines, interleave, load_engines, ort_session
from bnnc.ir import dtype, fresh_name, prune, shape
from bnnc.ir_convert import from_proto, to_proto
from bnnc.memory import peak_memory
from runtime import InferenceSession
from runtime.errors import BnncError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xnor_tile import Tile  # noqa: E402

BINARY_MODES = ("xnor", "ternary")


@dataclass
class BinaryLayer:
    name: str
    op: str
    mode: str
    pixels: int  # output positions: batch x output pixels (conv), batch rows (dense)
    bits: int  # K: input bits per dot product
    channels: int  # C: output channels / features


def binary_layers(reference: onnx.ModelProto, layers: list[dict]) -> list[BinaryLayer]:
    """Shapes of the binary layers of ``layers`` (bnnc's layer table) in the ``reference`` model."""
    nodes = {n.name: n for n in from_proto(reference).graph}
    out = []
    for r in layers:
        if r["mode"] not in BINARY_MODES:
            continue
        if r["name"] not in nodes or shape(nodes[r["name"]].outputs[0]) is None:
            raise BnncError(f"binary layer '{r['name']}' has no static output shape in the reference graph")
        y = shape(nodes[r["name"]].outputs[0])
        channels = int(y[1]) if r["op"] == "Conv" else int(y[-1])
        size = int(np.prod(y))
        if r["macs"] % size:
            raise BnncError(f"layer '{r['name']}': {r['macs']} MACs is not a multiple of its {size} outputs")
        out.append(BinaryLayer(r["name"], r["op"], r["mode"], size // channels, r["macs"] // size, channels))
    return out


def float_part(reference: onnx.ModelProto, layers: list[dict], plan: list[dict],
               seed: int = 0) -> tuple[bytes | None, dict[str, np.ndarray]]:
    """The cut graph of (a) and random values for the binary layers' results it reads; None
    when nothing float is left to run. ``plan`` is the compiled artifact's plan: a binary
    layer's step names the real values it computes (a Bi-Real block's shortcut sum), which the
    cut graph then reads instead of computing them."""
    model = from_proto(reference)  # a copy: the caller's model stays whole
    graph = model.graph
    values = {v.name: v for n in graph for v in n.outputs if v.name}
    binary = {r["name"] for r in layers if r["mode"] in BINARY_MODES}
    fed = [n.outputs[0].name for n in graph if n.name in binary]
    fed += [o for st in plan if st["name"] in binary for o in st["outputs"] if o in values]
    fed = list(dict.fromkeys(fed))
    # every real value bnnc's plan reads (a shortcut, a Binarize's input) is work bnnc does too
    kept = [values[i] for st in plan for i in st["inputs"] if i in values and i not in fed]
    outputs = list(dict.fromkeys([o for o in graph.outputs if o.name not in fed] + kept))
    for name in fed:  # the binary layers' results become inputs of the cut graph
        v = values[name]
        v.name = fresh_name(graph, f"{name}_computed")
        x = ir.Value(name=name, shape=v.shape, type=v.type)
        ir.convenience.replace_all_uses_with(v, x, replace_graph_outputs=True)
        graph.inputs.append(x)
    while graph.outputs:
        graph.outputs.pop()
    graph.outputs.extend(outputs)
    prune(graph)
    read = [i for i in graph.inputs if i.uses() or i.is_graph_output()]
    while graph.inputs:
        graph.inputs.pop()
    graph.inputs.extend(read)
    if not len(graph):
        return None, {}
    rng = np.random.default_rng(seed)
    feeds = {v.name: rng.standard_normal(shape(v)).astype(dtype(v) or "float32") for v in graph.inputs if v.name in fed}
    return to_proto(model).SerializeToString(), feeds


def measure(onnx_path: str, threads: int = 1, repeat: int = 20, warmup: int = 3, profile: bool = False) -> dict:
    """Floor, bnnc and onnxruntime on ``onnx_path`` in one interleaved run (medians, ms)."""
    return measure_threads(onnx_path, [threads], repeat, warmup, profile=profile)[0]


def measure_threads(onnx_path: str, thread_counts: list[int], repeat: int = 20, warmup: int = 3,
                    memory: bool = False, profile: bool = False) -> list[dict]:
    """``measure`` at each thread count, the model compiled once; with ``memory``, the first
    result also gets both engines' peak memory (``bnnc.memory``) at its thread count; with
    ``profile``, every binary layer also gets bnnc's own median time for it
    (``InferenceSession.profile``, interleaved with the rest) and its rate against the tile's."""
    with tempfile.TemporaryDirectory() as d:
        e = load_engines(onnx_path, thread_counts[0], artifact_dir=d)
        layers = json.loads(e.manifest.get("metadata", {}).get("bnnc.layers", "[]"))
        binary = binary_layers(e.reference, layers)
        cut, cut_feeds = float_part(e.reference, layers, e.manifest["plan"])
        reference = e.reference.SerializeToString()
        results = []
        for threads in thread_counts:
            if threads != thread_counts[0]:
                e.ours, e.theirs = InferenceSession(os.path.join(d, "m.bnn"), threads=threads), ort_session(reference, threads)
            r = _timed(e, binary, cut, cut_feeds, threads, repeat, warmup, profile)
            results.append({"model": onnx_path, "inputs": {k: list(v.shape) for k, v in e.feeds.items()},
                            "binary_mac_fraction": _binary_fraction(layers), **r})
        if memory:
            results[0]["memory"] = peak_memory(os.path.join(d, "m.bnn"), e.reference, e.feeds, thread_counts[0])
    return results


def _binary_fraction(layers: list[dict]) -> float:
    total = sum(r["macs"] for r in layers)
    return sum(r["macs"] for r in layers if r["mode"] in BINARY_MODES) / total if total else 0.0


def _timed(e: Engines, binary: list[BinaryLayer], cut: bytes | None, cut_feeds: dict, threads: int,
           repeat: int, warmup: int, profile: bool) -> dict:
    fns = {"bnnc": lambda: e.ours.run(None, e.feeds), "onnxruntime": lambda: e.theirs.run(None, e.feeds)}
    profiles: list[list[tuple[str, str, float]]] = []
    if profile:  # one profiled run per call, so that bnnc's per-layer times are interleaved too
        fns["bnnc profile"] = lambda: profiles.append(e.ours.profile(e.feeds, 1))
    if cut is not None:
        sess = ort_session(cut, threads)
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in {**e.feeds, **cut_feeds}.items() if k in names}
        fns["float part"] = lambda: sess.run(None, feeds)
    variants = [(n, inner) for n in sorted({1, threads}) for inner in (False, True)]
    tiles = [{v: Tile(b.pixels, b.bits, b.channels, b.mode == "ternary", *v) for v in variants} for b in binary]
    for b, ts in zip(binary, tiles):
        for (n, inner), t in ts.items():
            fns[f"tile {b.name} {n} {inner}"] = t.run
    runs = interleave(fns, repeat, warmup)
    times = {k: statistics.median(v) * 1e3 for k, v in runs.items()}
    rows = []
    for b, ts in zip(binary, tiles):
        ms, v = min((times[f"tile {b.name} {n} {inner}"] / t.reps, (n, inner)) for (n, inner), t in ts.items())
        t = ts[v]
        rows.append({"name": b.name, "op": b.op, "mode": b.mode, "pixels": b.pixels, "bits": b.bits, "words": t.words,
                     "channels": b.channels, "binary_macs": t.macs, "tile_ms": ms, "tile_threads": v[0],
                     "tile_loop": "pixels innermost" if v[1] else "channels innermost", "gmacs": t.macs / ms / 1e6})
    kernels: dict[str, list[float]] = {}
    for run in profiles[warmup:]:
        for name, _, sec in run:
            kernels.setdefault(name, []).append(sec * 1e3)
    for x in rows:
        if x["name"] in kernels:
            x["bnnc_ms"] = statistics.median(kernels[x["name"]])
            x["of_tile"] = x["tile_ms"] / x["bnnc_ms"]
    float_ms = times.get("float part", 0.0)
    floor = float_ms + sum(r["tile_ms"] for r in rows)
    return {"threads": threads, "repeat": repeat, "onnxruntime_ms": times["onnxruntime"], "bnnc_ms": times["bnnc"],
            "float_part_ms": float_ms, "tiles_ms": floor - float_ms, "floor_ms": floor,
            "efficiency": floor / times["bnnc"], "speedup": times["onnxruntime"] / times["bnnc"], "layers": rows,
            "min_ms": {k: min(runs[k]) * 1e3 for k in ("bnnc", "onnxruntime", "float part") if k in runs}}


def format_floor(r: dict) -> str:
    lines = [f"{r['model']}: {r['threads']} thread(s), medians of {r['repeat']} interleaved runs",
             f"  floor        {r['floor_ms']:9.3f} ms = float part in onnxruntime {r['float_part_ms']:.3f}"
             f" + {len(r['layers'])} XOR-popcount tiles {r['tiles_ms']:.3f}",
             f"  bnnc         {r['bnnc_ms']:9.3f} ms   efficiency floor/bnnc {r['efficiency']:.2f}",
             f"  onnxruntime  {r['onnxruntime_ms']:9.3f} ms   onnxruntime/bnnc {r['speedup']:.2f}x"]
    if r["layers"]:
        width = max(len(x["name"]) for x in r["layers"])
        ours = any("bnnc_ms" in x for x in r["layers"])
        extra = f"  {'bnnc ms':>8}  {'tile/bnnc':>9}" if ours else ""
        lines += ["", f"  {'binary layer':<{width}}  {'pixels x words x channels':>27}  {'tile ms':>8}  {'threads':>7}"
                      f"  {'GMAC/s':>7}{extra}  tile loop"]
        for x in r["layers"]:
            shape = f"{x['pixels']} x {x['words']} x {x['channels']}" + (" (ternary)" if x["mode"] == "ternary" else "")
            mine = f"  {x['bnnc_ms']:>8.3f}  {x['of_tile']:>9.2f}" if "bnnc_ms" in x else (f"  {'':>8}  {'':>9}" if ours else "")
            lines.append(f"  {x['name']:<{width}}  {shape:>27}  {x['tile_ms']:>8.3f}  {x['tile_threads']:>7}"
                         f"  {x['gmacs']:>7.0f}{mine}  {x['tile_loop']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="also bnnc's own time per binary layer (InferenceSession.profile) next to its tile")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        r = measure(args.model, args.threads, args.repeat, args.warmup, args.profile)
    except BnncError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(r, indent=1) if args.json else format_floor(r))


if __name__ == "__main__":
    main()
