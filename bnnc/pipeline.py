"""Passes and the runner that owns timing, dumping and bookkeeping.

A pass is a class with a kebab-case ``name``, a module docstring that states its rewrite and
math, and ``call(graph) -> PassResult``. Passes never print: a rule that does not apply returns
a reason string, which the runner collects (``bnnc compile -v`` and ``bnnc inspect`` show them).
The runner re-sorts the graph, re-infers shapes, names new nodes and, with a dump directory,
hands the graph to ``bnnc.dumps.PassDumper`` before the first pass and after every pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bnnc.dumps import PassDumper
from bnnc.graph import Graph


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
    dumper = PassDumper(dump_dir) if dump_dir is not None else None
    if dumper is not None:
        dumper.start(graph.to_model())
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
        if dumper is not None:
            dumper.after_pass(i, p.name, graph.to_model())
    if dumper is not None:
        dumper.write_summary([vars(r) for r in records])
    return records
