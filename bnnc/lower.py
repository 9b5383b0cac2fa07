"""Lower a fully compiled Graph into the artifact's manifest and tensors.

Every node becomes one plan step (op name, inputs, outputs, JSON attributes) in topological
order; every value gets its static shape and dtype; every constant becomes a checksummed tensor.
A node that no runtime kernel implements, or a value whose shape is not static, is an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnnc.graph import Graph, attrs_of, op_key
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


def lower(graph: Graph, producer: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Return ``(manifest, tensors)`` for ``graph``; see the module docstring."""
    missing: dict[str, list[str]] = {}
    for n in graph.nodes:
        if op_key(n) not in KERNELS:
            missing.setdefault(op_key(n), []).append(n.name)
    if missing:
        parts = [f"{op} (node {', '.join(repr(x) for x in v)})" for op, v in sorted(missing.items())]
        raise BnncError(
            "these nodes could not be compiled (not resolved at compile time and no runtime "
            f"kernel): {'; '.join(parts)}"
        )
    values: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(graph.inputs + [o for n in graph.nodes for o in n.output if o] + graph.outputs):
        shape, dtype = graph.shape(name), graph.dtype(name)
        if shape is None or dtype is None:
            where = next((f" (output of node '{n.name}')" for n in graph.nodes if name in n.output), "")
            raise BnncError(f"cannot determine the static shape of '{name}'{where}")
        values[name] = {"shape": list(shape), "dtype": dtype}
    opset = graph.opsets.get("", graph.opsets.get("ai.onnx", 0))
    plan = [
        {
            "name": n.name,
            "op": op_key(n),
            "inputs": list(n.input),
            "outputs": _without_trailing_blanks(list(n.output)),
            "attrs": _plan_attrs(n, opset),
        }
        for n in graph.nodes
    ]
    io = lambda names: [{"name": x, **values[x]} for x in names]  # noqa: E731
    outputs = io(graph.outputs)
    inputs = io(graph.inputs)
    dynamic = graph.metadata.get("bnnc.dynamic_batch") == "1" and all(
        v["shape"] and v["shape"][0] == inputs[0]["shape"][0] for v in inputs + outputs
    )
    manifest = {
        "format": "bnnc-artifact",
        "producer": producer,
        "graph_name": graph.name,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_batch": dynamic,
        "values": values,
        "plan": plan,
        "metadata": {k: v for k, v in graph.metadata.items() if not k.startswith("bnnc.dynamic")},
    }
    tensors = {k: np.asarray(v, order="C") for k, v in graph.consts.items()}
    return manifest, tensors


def _without_trailing_blanks(names: list[str]) -> list[str]:
    """A node's output names without the trailing "" of optional outputs it does not produce."""
    while names and not names[-1]:
        names.pop()
    return names
