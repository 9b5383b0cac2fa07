"""Turn every node whose inputs are all constants into an initializer.

* ``Constant`` nodes become initializers; ``Shape``/``Size`` of a value with a static shape become
  int64 constants, so shape arithmetic (Gather, Slice, Concat, ConstantOfShape, Reshape...) folds.
* Standard ops are evaluated with onnxruntime (graph optimizations off), so a folded value is
  bit for bit what onnxruntime computes for the node in the original model; QONNX ops on constants
  use the references in ``bnnc/qonnx.py``. This turns ``Sign(W)``, ``Mul(Sign(W), ReduceMean(Abs(W)))``,
  ``BipolarQuant(W)`` and ``Transpose/Reshape(W)`` into plain weights.
* Repeats (re-inferring shapes) to a fixpoint, then drops dead nodes and unused constants.

Not folded, with a reason: outputs above MAX_ELEMENTS elements, nodes producing graph outputs,
random and control-flow ops, and nodes onnxruntime fails to evaluate.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from bnnc import qonnx
from bnnc.graph import Graph, attrs_of
from bnnc.pipeline import Pass, PassResult
from runtime.errors import BnncError

MAX_ELEMENTS = 64 * 1024 * 1024
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
NEVER_FOLD = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan",
}


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, or None for string and sparse constants."""
    for key, v in attrs_of(node).items():
        if key == "value" and isinstance(v, np.ndarray) and v.dtype != object:
            return v
        if key == "value_float":
            return np.array(v, np.float32)
        if key == "value_floats":
            return np.array(v, np.float32).reshape(-1)
        if key == "value_int":
            return np.array(v, np.int64)
        if key == "value_ints":
            return np.array(v, np.int64).reshape(-1)
    return None


def _fold_constant_nodes(graph: Graph, stats: Counter, reasons: dict[str, str]) -> bool:
    changed = False
    for node in list(graph.nodes):
        if node.op_type != "Constant" or node.domain not in STANDARD_DOMAINS:
            continue
        value = constant_value(node)
        if value is None or node.output[0] in graph.outputs:
            reasons[node.name] = f"{node.name}: Constant not folded: string/sparse value or graph output"
            continue
        graph.consts[node.output[0]] = value
        graph.replace([node], [])
        stats["constants"] += 1
        changed = True
    return changed


def _shape_value(graph: Graph, node: onnx.NodeProto) -> np.ndarray | None:
    shape = graph.shape(node.input[0])
    if shape is None or node.output[0] in graph.outputs:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    a = attrs_of(node)
    start, end = a.get("start", 0), a.get("end", len(shape))
    return np.array(shape[start:end], np.int64)


def _fold_shapes(graph: Graph, stats: Counter) -> bool:
    changed = False
    for node in list(graph.nodes):
        if node.op_type not in ("Shape", "Size") or node.domain not in STANDARD_DOMAINS:
            continue
        value = _shape_value(graph, node)
        if value is not None:
            graph.consts[node.output[0]] = value
            graph.replace([node], [])
            stats["shapes"] += 1
            changed = True
    return changed


def _fold_qonnx(graph: Graph, stats: Counter, reasons: dict[str, str]) -> bool:
    changed = False
    for node in list(graph.nodes):
        if not qonnx.is_qonnx(node) or not _inputs_constant(graph, node, set(graph.consts)):
            continue
        try:
            outs = qonnx.evaluate(node, [graph.consts[i] for i in node.input])
        except BnncError as e:
            reasons[node.name] = f"{node.name}: {node.op_type} on constants not folded: {e}"
            continue
        graph.consts.update(zip(node.output, outs, strict=False))
        graph.replace([node], [])
        stats["qonnx"] += 1
        changed = True
    return changed


def _inputs_constant(graph: Graph, node: onnx.NodeProto, known: set[str]) -> bool:
    return all(not i or i in known for i in node.input) and not any(o in graph.outputs for o in node.output)


def _too_big(graph: Graph, node: onnx.NodeProto) -> str | None:
    for o in node.output:
        shape = graph.shape(o)
        dims = graph.const(node.input[0]) if node.op_type == "ConstantOfShape" else None
        if shape is None and dims is not None:
            shape = tuple(int(d) for d in dims.reshape(-1))
        if shape is not None and int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
            return f"{node.name}: {node.op_type} not folded: output '{o}' would have {int(np.prod(shape))} elements"
    return None


def _foldable_batch(graph: Graph, reasons: dict[str, str]) -> list[onnx.NodeProto]:
    """The standard nodes computable from constants alone, in graph (topological) order."""
    known = set(graph.consts)
    batch = []
    for node in graph.nodes:
        if node.domain not in STANDARD_DOMAINS or node.op_type in NEVER_FOLD or node.op_type == "Constant":
            continue
        if not node.input or not _inputs_constant(graph, node, known):
            continue
        big = _too_big(graph, node)
        if big:
            reasons[node.name] = big
            continue
        batch.append(node)
        known.update(o for o in node.output if o)
    return batch


def _evaluate(graph: Graph, batch: list[onnx.NodeProto], reasons: dict[str, str]) -> list[onnx.NodeProto]:
    """Evaluate ``batch`` into ``graph.consts`` (values read outside it); return the nodes done."""
    in_batch = {id(n) for n in batch}
    produced = {o for n in batch for o in n.output if o}
    read_outside = {i for n in graph.nodes if id(n) not in in_batch for i in n.input} & produced
    opsets = {d: v for d, v in graph.opsets.items() if d in STANDARD_DOMAINS}
    wanted = sorted(read_outside)
    try:
        values = qonnx.run_onnx_nodes(batch, graph.consts, wanted, opsets) if wanted else []
        graph.consts.update(zip(wanted, values, strict=True))
        return batch
    except Exception:  # one node onnxruntime cannot evaluate; find it by going node by node
        return _evaluate_one_by_one(graph, batch, read_outside, opsets, reasons)


def _evaluate_one_by_one(
    graph: Graph, batch: list[onnx.NodeProto], read_outside: set[str], opsets: dict[str, int], reasons: dict[str, str]
) -> list[onnx.NodeProto]:
    values = dict(graph.consts)
    done = []
    for node in batch:
        if not all(not i or i in values for i in node.input):
            continue
        outs = [o for o in node.output if o]
        try:
            results = qonnx.run_onnx_nodes([node], values, outs, opsets)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = first.rsplit("Status Message: ", 1)[-1][-200:]
            reasons[node.name] = f"{node.name}: {node.op_type} on constants not folded: onnxruntime failed: {first}"
            continue
        values.update(zip(outs, results, strict=True))
        done.append(node)
    done_ids = {id(n) for n in done}
    needed = read_outside | {i for n in batch if id(n) not in done_ids for i in n.input}
    graph.consts.update({o: values[o] for n in done for o in n.output if o in needed})
    return done


class FoldConstants(Pass):
    """See the module docstring."""

    name = "fold-constants"

    def call(self, graph: Graph) -> PassResult:
        stats: Counter[str] = Counter()
        reasons: dict[str, str] = {}
        modified = False
        while True:
            changed = _fold_constant_nodes(graph, stats, reasons)
            changed |= _fold_shapes(graph, stats)
            changed |= _fold_qonnx(graph, stats, reasons)
            batch = _foldable_batch(graph, reasons)
            done = _evaluate(graph, batch, reasons) if batch else []
            if done:
                graph.replace(done, [])
                stats["folded"] += len(done)
                changed = True
            if not changed:
                break
            modified = True
            graph.infer_shapes()
        n_consts = len(graph.consts)
        pruned = graph.prune()
        if pruned:
            stats["pruned"] = pruned
        if len(graph.consts) < n_consts:
            stats["dropped_constants"] = n_consts - len(graph.consts)
        changed = modified or pruned > 0 or len(graph.consts) < n_consts
        return PassResult(changed, dict(stats), list(reasons.values()))
