"""Small helpers the pattern-matching passes share."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bnnc.graph import BNNC_DOMAIN, Graph


def scalar(graph: Graph, name: str) -> float | None:
    """The value of a one-element constant, or None."""
    c = graph.const(name)
    if c is None or c.size != 1:
        return None
    return float(c.reshape(-1)[0])


def uniform(graph: Graph, name: str) -> float | None:
    """The value of a constant whose elements are all equal, or None."""
    c = graph.const(name)
    if c is None or c.size == 0:
        return None
    flat = c.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def is_std(node: onnx.NodeProto | None, *ops: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in ops


def is_bnnc(node: onnx.NodeProto | None, *ops: str) -> bool:
    return node is not None and node.domain == BNNC_DOMAIN and node.op_type in ops


def only_reader(consumers: dict, name: str, graph: Graph) -> bool:
    """``name`` has exactly one reader and is not a graph output."""
    return len(consumers.get(name, ())) == 1 and name not in graph.outputs


def tag(node: onnx.NodeProto, pass_name: str) -> onnx.NodeProto:
    """Mark a node as created by ``pass_name`` (dumps and Netron show it)."""
    node.metadata_props.add(key="bnnc.pass", value=pass_name)
    return node


def bnnc_node(op: str, inputs, outputs, name: str, pass_name: str, **attrs) -> onnx.NodeProto:
    node = helper.make_node(op, list(inputs), list(outputs), name=name, domain=BNNC_DOMAIN, **attrs)
    return tag(node, pass_name)


def std_node(op: str, inputs, outputs, name: str, pass_name: str, **attrs) -> onnx.NodeProto:
    return tag(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs), pass_name)
