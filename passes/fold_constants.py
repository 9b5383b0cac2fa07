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
import onnx_ir as ir

from bnnc import qonnx
from bnnc.ir import add_const, attrs_of, const, prune, remove, replace_value, shape
from bnnc.ir_convert import infer_shapes
from bnnc.pipeline import Pass, PassResult
from runtime.errors import BnncError

MAX_ELEMENTS = 64 * 1024 * 1024
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
NEVER_FOLD = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan",
}


def constant_value(node: ir.Node) -> np.ndarray | None:
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


def _becomes_const(graph: ir.Graph, nodes: list[ir.Node], values: dict[ir.Value, np.ndarray]) -> None:
    """The outputs of ``nodes`` that others read become initializers (same names); the nodes go."""
    for v, array in values.items():
        if v.uses():
            replace_value(graph, v, add_const(graph, array, f"{v.name}_folded"), rename=True)
    remove(graph, nodes)


def _fold_constant_nodes(graph: ir.Graph, stats: Counter, reasons: dict[str, str]) -> bool:
    changed = False
    for node in list(graph):
        if node.op_type != "Constant" or node.domain not in STANDARD_DOMAINS:
            continue
        value = constant_value(node)
        if value is None or node.outputs[0].is_graph_output():
            reasons[node.name] = f"{node.name}: Constant not folded: string/sparse value or graph output"
            continue
        _becomes_const(graph, [node], {node.outputs[0]: value})
        stats["constants"] += 1
        changed = True
    return changed


def _shape_value(node: ir.Node) -> np.ndarray | None:
    s = shape(node.inputs[0])
    if s is None or node.outputs[0].is_graph_output():
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(s, dtype=np.int64)), np.int64)
    a = attrs_of(node)
    start, end = a.get("start", 0), a.get("end", len(s))
    return np.array(s[start:end], np.int64)


def _fold_shapes(graph: ir.Graph, stats: Counter) -> bool:
    changed = False
    for node in list(graph):
        if node.op_type not in ("Shape", "Size") or node.domain not in STANDARD_DOMAINS:
            continue
        value = _shape_value(node)
        if value is not None:
            _becomes_const(graph, [node], {node.outputs[0]: value})
            stats["shapes"] += 1
            changed = True
    return changed


def _fold_qonnx(graph: ir.Graph, stats: Counter, reasons: dict[str, str]) -> bool:
    changed = False
    for node in list(graph):
        if node.domain not in qonnx.QONNX_DOMAINS or not _inputs_constant(node, set()):
            continue
        try:
            outs = qonnx.evaluate(ir.serde.serialize_node(node), [const(v) for v in node.inputs])
        except BnncError as e:
            reasons[node.name] = f"{node.name}: {node.op_type} on constants not folded: {e}"
            continue
        _becomes_const(graph, [node], dict(zip(node.outputs, outs, strict=False)))
        stats["qonnx"] += 1
        changed = True
    return changed


def _inputs_constant(node: ir.Node, known: set[ir.Value]) -> bool:
    """Every input is a constant (or in ``known``) and no output is a graph output."""
    return (all(v is None or v.const_value is not None or v in known for v in node.inputs)
            and not any(o.is_graph_output() for o in node.outputs))


def _too_big(node: ir.Node) -> str | None:
    for o in node.outputs:
        s = shape(o)
        dims = const(node.inputs[0]) if node.op_type == "ConstantOfShape" else None
        if s is None and dims is not None:
            s = tuple(int(d) for d in dims.reshape(-1))
        if s is not None and int(np.prod(s, dtype=np.int64)) > MAX_ELEMENTS:
            return f"{node.name}: {node.op_type} not folded: output '{o.name}' would have {int(np.prod(s))} elements"
    return None


def _foldable_batch(graph: ir.Graph, reasons: dict[str, str]) -> list[ir.Node]:
    """The standard nodes computable from constants alone, in graph (topological) order."""
    known: set[ir.Value] = set()
    batch = []
    for node in graph:
        if node.domain not in STANDARD_DOMAINS or node.op_type in NEVER_FOLD or node.op_type == "Constant":
            continue
        if not node.inputs or not _inputs_constant(node, known):
            continue
        big = _too_big(node)
        if big:
            reasons[node.name] = big
            continue
        batch.append(node)
        known.update(o for o in node.outputs if o.name)
    return batch


def _run(nodes: list[ir.Node], opsets: dict[str, int], wanted: list[ir.Value],
         values: dict[str, np.ndarray]) -> list[np.ndarray]:
    protos = [ir.serde.serialize_node(n) for n in nodes]
    for n in nodes:
        values.update({v.name: const(v) for v in n.inputs if v is not None and v.const_value is not None})
    return qonnx.run_onnx_nodes(protos, values, [v.name for v in wanted], opsets)


def _evaluate(graph: ir.Graph, batch: list[ir.Node], opsets: dict[str, int], reasons: dict[str, str]) -> list[ir.Node]:
    """Replace the values of ``batch`` read outside it by constants; return the nodes done."""
    in_batch = set(batch)
    wanted = [v for n in batch for v in n.outputs if v.name and any(u.node not in in_batch for u in v.uses())]
    try:
        results = _run(batch, opsets, wanted, {}) if wanted else []
    except (BnncError, RuntimeError, ValueError):  # one node onnxruntime cannot evaluate: go node by node
        return _evaluate_one_by_one(graph, batch, opsets, reasons)
    _becomes_const(graph, batch, dict(zip(wanted, results, strict=True)))
    return batch


def _evaluate_one_by_one(graph: ir.Graph, batch: list[ir.Node], opsets: dict[str, int],
                         reasons: dict[str, str]) -> list[ir.Node]:
    values: dict[str, np.ndarray] = {}
    done: list[ir.Node] = []
    for node in batch:
        if not all(v is None or v.const_value is not None or v.name in values for v in node.inputs):
            continue
        outs = [o for o in node.outputs if o.name]
        try:
            results = _run([node], opsets, outs, values)
        except (BnncError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = first.rsplit("Status Message: ", 1)[-1][-200:]
            reasons[node.name] = f"{node.name}: {node.op_type} on constants not folded: onnxruntime failed: {first}"
            continue
        values.update({o.name: r for o, r in zip(outs, results, strict=True)})
        done.append(node)
    done_set = set(done)
    # values read by nodes that stay (outside the batch or not evaluated) become constants
    needed = {o: values[o.name] for n in done for o in n.outputs if o.name and any(u.node not in done_set for u in o.uses())}
    _becomes_const(graph, done, needed)
    return done


class FoldConstants(Pass):
    """See the module docstring."""

    name = "fold-constants"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        opsets = {d: v for d, v in model.opset_imports.items() if d in STANDARD_DOMAINS}
        stats: Counter[str] = Counter()
        reasons: dict[str, str] = {}
        modified = False
        while True:
            changed = _fold_constant_nodes(graph, stats, reasons)
            changed |= _fold_shapes(graph, stats)
            changed |= _fold_qonnx(graph, stats, reasons)
            batch = _foldable_batch(graph, reasons)
            done = _evaluate(graph, batch, opsets, reasons) if batch else []
            if done:
                stats["folded"] += len(done)
                changed = True
            if not changed:
                break
            modified = True
            infer_shapes(model)
        n_consts = len(graph.initializers)
        pruned = prune(graph)
        if pruned:
            stats["pruned"] = pruned
        if len(graph.initializers) < n_consts:
            stats["dropped_constants"] = n_consts - len(graph.initializers)
        changed = modified or pruned > 0 or len(graph.initializers) < n_consts
        return PassResult(model, changed, dict(stats), list(reasons.values()))
