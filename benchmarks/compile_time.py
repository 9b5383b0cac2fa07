"""Benchmark: compile time of a plain float chain against its length.

The chain repeats Conv(3x3, 8 -> 8 channels, pads 1) + BatchNormalization + Relu on an
[1, 8, 8, 8] input, built with onnx.helper; every block has its own weights. A compile runs the
whole default pipeline and the lowering (the artifact goes to a temporary directory); we print
the median of ``--repeat`` compiles per size and the time per node, which stays flat when the
compiler is linear in the graph size.

    python benchmarks/compile_time.py [--nodes 300,1500,3000] [--repeat 3] [--profile N]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bnnc  # noqa: E402

C, HW = 8, 8


def float_chain(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu blocks, ``n_nodes // 3`` of them."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(max(1, n_nodes // 3)):
        w = numpy_helper.from_array((rng.standard_normal((C, C, 3, 3)) * 0.2).astype(np.float32), f"w{i}")
        bn = [numpy_helper.from_array(a.astype(np.float32), f"{p}{i}") for p, a in (
            ("gamma", rng.uniform(0.5, 1.5, C)), ("beta", rng.standard_normal(C)),
            ("mean", rng.standard_normal(C) * 0.1), ("var", rng.uniform(0.5, 1.5, C)))]
        inits += [w, *bn]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}"] + [t.name for t in bn], [f"b{i}"], name=f"bn{i}"),
            helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, HW, HW])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, C, HW, HW])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def compile_seconds(model: onnx.ModelProto, directory: str) -> float:
    path = os.path.join(directory, "chain.onnx")
    onnx.save(model, path)
    t0 = time.perf_counter()
    bnnc.compile(path, os.path.join(directory, "chain.bnn"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="300,1500,3000", help="comma-separated chain lengths (nodes)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, help="profile one compile of this many nodes instead")
    ap.add_argument("--sort", default="cumulative", help="profile order (cumulative, tottime)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.profile:
            model = float_chain(args.profile)
            prof = cProfile.Profile()
            prof.runcall(compile_seconds, model, d)
            pstats.Stats(prof).sort_stats(args.sort).print_stats(30)
            return
        print(f"{'nodes':>6} {'median s':>9} {'min s':>7} {'ms/node':>8}")
        for n in (int(v) for v in args.nodes.split(",")):
            model = float_chain(n)
            times = [compile_seconds(model, d) for _ in range(args.repeat)]
            med = statistics.median(times)
            print(f"{len(model.graph.node):>6} {med:>9.2f} {min(times):>7.2f} {1000 * med / len(model.graph.node):>8.2f}")


if __name__ == "__main__":
    main()
