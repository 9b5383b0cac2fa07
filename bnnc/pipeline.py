"""Passes and the runner that owns timing, dumping and bookkeeping.

A pass is an onnx-ir in-place pass (``ir.passes.InPlacePass``) with a kebab-case ``name``, a
module docstring that states its rewrite and math, and ``call(model) -> PassResult`` (onnx-ir's
result plus bnnc's ``stats`` and ``reasons``). Passes never print: a rule that does not apply
returns a reason string, which the runner collects (``bnnc compile -v`` and ``bnnc inspect`` show
them). After a pass that changed the graph the runner sorts it, names new nodes and re-infers the
shapes left unknown; with a dump directory it hands the model (as ONNX, with the facts the passes
keep on nodes) to ``bnnc.dumps.PassDumper`` before the first pass and after every pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

from bnnc.dumps import PassDumper
from bnnc.ir import name_nodes, op_counts
from bnnc.ir_convert import infer_shapes, to_proto, untyped
from runtime.errors import BnncError


@dataclass
class PassResult(ir.passes.PassResult):
    stats: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


class Pass(ir.passes.InPlacePass):
    """Base class of every graph pass."""

    name: ClassVar[str] = ""

    def call(self, model: ir.Model) -> PassResult:
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
    model: ir.Model,
    passes: Sequence[Pass],
    dump_dir: str | None = None,
    progress: Callable[[PassRecord], None] | None = None,
) -> list[PassRecord]:
    """Run ``passes`` in order on ``model`` (in place) and return one record per pass."""
    dumper = PassDumper(dump_dir) if dump_dir is not None else None
    if dumper is not None:
        dumper.start(to_proto(model, with_facts=True))
    records: list[PassRecord] = []
    for i, p in enumerate(passes, start=1):
        t0 = time.perf_counter()
        result = p(model)
        if result.modified:
            try:
                model.graph.sort()
            except ValueError as e:
                raise BnncError(f"pass {p.name} left a cycle in the graph: {e}") from e
            name_nodes(model.graph)
            if untyped(model.graph):  # passes type what they make; inference fills in the rest
                infer_shapes(model)
        rec = PassRecord(
            index=i,
            name=p.name,
            modified=bool(result.modified),
            stats=dict(getattr(result, "stats", {})),
            reasons=list(getattr(result, "reasons", [])),
            op_counts=op_counts(model.graph),
            seconds=time.perf_counter() - t0,
        )
        records.append(rec)
        if progress is not None:
            progress(rec)
        if dumper is not None:
            dumper.after_pass(i, p.name, to_proto(model, with_facts=True))
    if dumper is not None:
        dumper.write_summary([vars(r) for r in records])
    return records

