"""Lower a fully compiled model into the artifact's manifest and tensors.

Every node becomes one plan step (op name, inputs, outputs, JSON attributes) in topological
order; every value gets its static shape and dtype; every constant becomes a checksummed tensor;
the facts the passes kept on nodes and values become the manifest's metadata (bnnc/layers.py).
A node that no runtime kernel implements, or a value whose shape is not static, is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from bnnc.ir import attrs_of, const, dtype, op_key, shape
from bnnc.layers import manifest_metadata
from bnnc.loader import DYNAMIC_BATCH
from runtime.errors import BnncError
from runtime.kernels import KERNELS


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    raise BnncError(f"attribute value of type {type(v).__name__} cannot be stored in an artifact")


# ops whose meaning changed with the opset without a change of attributes: the kernel is told
_OPSET_SENSITIVE = {"Softmax", "LogSoftmax", "Hardmax"}


def _plan_attrs(node, opset: int) -> dict[str, Any]:
    attrs = {k: _jsonable(v) for k, v in attrs_of(node).items()}
    if node.op_type in _OPSET_SENSITIVE and node.domain in ("", "ai.onnx"):
        attrs["_opset"] = int(opset)
    return attrs


def lower(model: ir.Model, producer: str, metadata: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return ``(manifest, tensors)`` for ``model``; see the module docstring."""
    graph = model.graph
    _check_kernels(graph)
    values: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys([*graph.inputs, *(o for n in graph for o in n.outputs if o.name), *graph.outputs]):
        s, dt = shape(v), dtype(v)
        if s is None or dt is None:
            p = v.producer()
            where = f" (output of node '{p.name}')" if p is not None else ""
            raise BnncError(f"cannot determine the static shape of '{v.name}'{where}")
        values[v.name] = {"shape": list(s), "dtype": dt}
    opset = model.opset_imports.get("", 0)
    plan = [
        {
            "name": n.name,
            "op": op_key(n),
            "inputs": [v.name if v is not None else "" for v in n.inputs],
            "outputs": _without_trailing_blanks([v.name or "" for v in n.outputs]),
            "attrs": _plan_attrs(n, opset),
        }
        for n in graph
    ]
    io = lambda vals: [{"name": v.name, **values[v.name]} for v in vals]  # noqa: E731
    outputs = io(graph.outputs)
    inputs = io(graph.inputs)
    dynamic = bool(model.meta.get(DYNAMIC_BATCH)) and all(
        v["shape"] and v["shape"][0] == inputs[0]["shape"][0] for v in inputs + outputs
    )
    meta = dict(model.metadata_props)
    meta.update(manifest_metadata(graph))
    meta.update(metadata or {})
    manifest = {
        "format": "bnnc-artifact",
        "producer": producer,
        "graph_name": graph.name or "model",
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_batch": dynamic,
        "values": values,
        "plan": plan,
        "metadata": meta,
    }
    tensors = {k: np.asarray(const(v), order="C") for k, v in graph.initializers.items()}
    return manifest, tensors


def _check_kernels(graph: ir.Graph) -> None:
    """Every node left must have a runtime kernel; all the others are named in one error."""
    missing: dict[str, list[str]] = {}
    for n in graph:
        if op_key(n) not in KERNELS:
            missing.setdefault(op_key(n), []).append(n.name)
    if missing:
        parts = [f"{op} (node {', '.join(repr(x) for x in v)})" for op, v in sorted(missing.items())]
        raise BnncError(
            "these nodes could not be compiled (not resolved at compile time and no runtime "
            f"kernel): {'; '.join(parts)}"
        )


def _without_trailing_blanks(names: list[str]) -> list[str]:
    """A node's output names without the trailing "" of optional outputs it does not produce."""
    while names and not names[-1]:
        names.pop()
    return names
