"""Passes and the runner that owns timing, dumping and bookkeeping.

A pass is a class with a kebab-case ``name``, a module docstring that states its rewrite and
math, and ``call(graph) -> PassResult``. Passes never print: a rule that does not apply returns
a reason string, which the runner collects (``bnnc compile -v`` and ``bnnc inspect`` show them).
The runner re-sorts the graph, re-infers shapes, names new nodes and, with a dump directory,
writes ``00_input.onnx``, ``NN_<pass>.onnx``, ``NN_<pass>.txt`` and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx

from bnnc.graph import Graph
from runtime.errors import BnncError

ELIDE_ABOVE = 16  # initializers with more elements than this are elided from text dumps


@dataclass
class PassResult:
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


class Pass:
    """Base class of every graph pass."""

    name: ClassVar[str] = ""

    def call(self, graph: Graph) -> PassResult:
        raise NotImplementedError


@dataclass
class PassRecord:
    index: int
    name: str
    modified: bool
    stats: dict[str, Any]
    reasons: list[str]
    op_counts: dict[str, int]
    seconds: float


def run_pipeline(
    graph: Graph,
    passes: Sequence[Pass],
    dump_dir: str | None = None,
    progress: Callable[[PassRecord], None] | None = None,
) -> list[PassRecord]:
    """Run ``passes`` in order on ``graph`` (in place) and return one record per pass."""
    if dump_dir is not None:
        _prepare_dump_dir(dump_dir)
        _dump(graph, dump_dir, "00_input")
    records: list[PassRecord] = []
    for i, p in enumerate(passes, start=1):
        t0 = time.perf_counter()
        result = p.call(graph)
        graph.toposort()
        graph.name_nodes()
        if result.modified:
            graph.infer_shapes()
        rec = PassRecord(
            index=i,
            name=p.name,
            modified=bool(result.modified),
            stats=dict(result.stats),
            reasons=list(result.reasons),
            op_counts=graph.op_counts(),
            seconds=time.perf_counter() - t0,
        )
        records.append(rec)
        if progress is not None:
            progress(rec)
        if dump_dir is not None:
            _dump(graph, dump_dir, f"{i:02d}_{p.name}", text=True)
    if dump_dir is not None:
        summary = [
            {k: getattr(r, k) for k in ("index", "name", "modified", "stats", "reasons", "op_counts", "seconds")}
            for r in records
        ]
        _write_text(os.path.join(dump_dir, "summary.json"), json.dumps({"passes": summary}, indent=1, default=str))
    return records


def _prepare_dump_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise BnncError(f"cannot create dump directory '{path}': {e.strerror}") from None


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _dump(graph: Graph, dump_dir: str, stem: str, text: bool = False) -> None:
    model = graph.to_model()
    onnx.save(model, os.path.join(dump_dir, stem + ".onnx"))
    if text:
        _write_text(os.path.join(dump_dir, stem + ".txt"), model_text(model))


def model_text(model: onnx.ModelProto) -> str:
    """ONNX text syntax of ``model`` with initializers above ELIDE_ABOVE elements elided."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kept, elided = [], []
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if n > ELIDE_ABOVE:
            dims = "x".join(str(d) for d in t.dims)
            elided.append(f"#   {t.name}: {onnx.TensorProto.DataType.Name(t.data_type).lower()}[{dims}]")
        else:
            kept.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    head = "# initializers elided from this text (their values are in the .onnx file):\n"
    head = head + "\n".join(elided) + "\n" if elided else ""
    try:
        body = onnx.printer.to_text(m)
    except Exception as e:  # the printer does not know every construct; the .onnx is the truth
        body = f"# onnx.printer could not print this graph: {e}\n"
    return head + body
