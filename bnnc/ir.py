"""The compiler's in-memory IR: onnx-ir (``onnx_ir``) models, and the few helpers bnnc adds.

A model is an ``ir.Model``; its graph is a list of ``ir.Node`` whose inputs and outputs are
``ir.Value`` objects with use-def links (``value.producer()``, ``value.consumers()``), so a pass
asks a value who reads it instead of rebuilding maps. Constants are initializers (values with a
``const_value``); every value carries its static shape and dtype once the loader or a pass has
set them. Passes edit the graph through onnx-ir (``graph.insert_before``, ``graph.remove``,
``replace_value`` below); the pipeline runner re-sorts, names and re-infers shapes after a pass.
``to_proto`` gives the ``onnx.ModelProto`` for dumps, Netron and onnxruntime.

Facts the compiler learns about layers live on the nodes and values they describe
(``node.meta`` / ``value.meta``, see bnnc/layers.py) and reach the artifact only at lowering.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from runtime.errors import BnncError

BNNC_DOMAIN = "bnnc"
BNNC_OPSET = 1
PASS_KEY = "bnnc.pass"  # metadata_props key naming the pass that made a node
_NAMES = "bnnc.names"  # graph.meta key of the set of names taken in the graph

_NP_OF_IR = {
    ir.DataType.FLOAT: "float32", ir.DataType.DOUBLE: "float64", ir.DataType.INT8: "int8",
    ir.DataType.INT32: "int32", ir.DataType.INT64: "int64", ir.DataType.UINT8: "uint8",
    ir.DataType.UINT64: "uint64", ir.DataType.BOOL: "bool", ir.DataType.FLOAT16: "float16",
}
_IR_OF_NP = {v: k for k, v in _NP_OF_IR.items()}


def np_dtype(dt: ir.DataType) -> str:
    """The numpy name of an element type bnnc supports; a BnncError for the others."""
    if dt not in _NP_OF_IR:
        raise BnncError(f"tensor element type {dt.name} is not supported")
    return _NP_OF_IR[dt]


def ir_dtype(dtype: Any) -> ir.DataType:
    return _IR_OF_NP[str(np.dtype(dtype))]


def is_std_domain(domain: str) -> bool:
    return domain in ("", "ai.onnx")


def op_key(node: ir.Node) -> str:
    """The plan/kernel name of a node: "Conv" for standard ops, "bnnc.BinaryConv" otherwise."""
    return node.op_type if is_std_domain(node.domain) else f"{node.domain}.{node.op_type}"


_REPEATED = (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS)


def _plain(a: ir.Attr) -> Any:
    # dispatch on the attribute type: isinstance checks against onnx-ir's protocols are slow
    if a.type == ir.AttributeType.TENSOR:
        return a.value.numpy()
    if a.type == ir.AttributeType.TENSORS:
        return [t.numpy() for t in a.value]
    if a.type in _REPEATED:
        return list(a.value)
    return a.value


def attrs_of(node: ir.Node) -> dict[str, Any]:
    """A node's attributes as plain Python values (lists for repeated ones, tensors as arrays)."""
    return {k: _plain(a) for k, a in node.attributes.items()}


def node_attr(node: ir.Node, name: str, default: Any = None) -> Any:
    a = node.attributes.get(name)
    return default if a is None else _plain(a)


def _ir_attr(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ir.Tensor(v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [x.item() if isinstance(x, np.generic) else x for x in v]
    return v


def set_attrs(node: ir.Node, **attrs: Any) -> None:
    """Set (or replace) attributes of ``node`` from plain Python values."""
    for k, v in attrs.items():
        node.attributes[k] = _convert(k, v)


def _convert(name: str, v: Any) -> ir.Attr:
    """An attribute from a plain value (typed here: onnx-ir's inference is slow on hot paths)."""
    v = _ir_attr(v)
    if isinstance(v, bool | int):
        return ir.AttrInt64(name, int(v))
    if isinstance(v, float):
        return ir.AttrFloat32(name, v)
    if isinstance(v, str):
        return ir.AttrString(name, v)
    if isinstance(v, list):
        if not v or any(isinstance(x, float) for x in v):  # [] has no element type: floats
            return ir.AttrFloat32s(name, [float(x) for x in v])
        if all(isinstance(x, int) for x in v):
            return ir.AttrInt64s(name, v)
        if all(isinstance(x, str) for x in v):
            return ir.AttrStrings(name, v)
    if isinstance(v, ir.Tensor):
        return ir.AttrTensor(name, v)
    return ir.convenience.convert_attribute(name, v)


# -- values -------------------------------------------------------------------------------------
def const(value: ir.Value | None) -> np.ndarray | None:
    """The array of a constant value (an initializer), or None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The static shape of a value, or None when it is unknown or not fully static."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    s = value.shape
    if s is None or not s.is_static():
        return None
    return tuple(int(d) for d in s)


def dtype(value: ir.Value | None) -> str | None:
    if value is None:
        return None
    dt = value.const_value.dtype if value.const_value is not None else value.dtype
    return _NP_OF_IR.get(dt) if dt is not None else None


def set_type(value: ir.Value, dims: Iterable[int], dt: Any) -> ir.Value:
    value.shape = ir.Shape([int(d) for d in dims])
    value.dtype = ir_dtype(dt)
    return value


def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, or None."""
    c = const(value)
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def uniform(value: ir.Value | None) -> float | None:
    """The value of a constant whose elements are all equal, or None."""
    c = const(value)
    if c is None or c.size == 0:
        return None
    flat = c.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def only_reader(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value``, when it is also not a graph output; else None."""
    readers = value.consumers()
    return readers[0] if len(readers) == 1 and not value.is_graph_output() else None


def data_inputs(node: ir.Node) -> list[ir.Value]:
    """The non-constant inputs of ``node``."""
    return [v for v in node.inputs if v is not None and v.const_value is None]


# -- names and new nodes ------------------------------------------------------------------------
def _taken(graph: ir.Graph) -> set[str]:
    names = graph.meta.get(_NAMES)
    if names is None:
        names = set(graph.initializers) | {v.name for v in graph.inputs if v.name}
        for n in graph:
            names.update(v.name for v in n.outputs if v.name)
            if n.name:
                names.add(n.name)
        graph.meta[_NAMES] = names
    return names


def fresh_name(graph: ir.Graph, hint: str) -> str:
    """``hint``, or ``hint_K`` for the first K that no node, value or constant uses yet."""
    taken = _taken(graph)
    name, k = hint, 0
    while name in taken:
        name, k = f"{hint}_{k}", k + 1
    taken.add(name)
    return name


def add_const(graph: ir.Graph, array: np.ndarray, hint: str) -> ir.Value:
    """A new initializer holding ``array``."""
    array = np.asarray(array)
    name = fresh_name(graph, hint)
    v = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
    set_type(v, array.shape, array.dtype)
    graph.register_initializer(v)
    return v


def new_value(graph: ir.Graph, hint: str, dims: Iterable[int] | None = None, dt: Any = None) -> ir.Value:
    """A new value to be produced by a node made with ``make_node(outputs=...)``."""
    v = ir.Value(name=fresh_name(graph, hint))
    if dims is not None:
        set_type(v, dims, dt)
    return v


def make_node(graph: ir.Graph, op: str, inputs: Sequence[ir.Value | None], name: str, pass_name: str, *,
              outputs: Sequence[ir.Value] | None = None, num_outputs: int = 1, domain: str = "",
              **attrs: Any) -> ir.Node:
    """A node tagged with the pass that made it (dumps and Netron show it); not yet in the graph.

    ``name`` is made unique; without ``outputs`` the node gets ``num_outputs`` fresh values."""
    name = fresh_name(graph, name)
    if outputs is None:
        outputs = [ir.Value(name=fresh_name(graph, f"{name}_out{i}" if i else f"{name}_out")) for i in range(num_outputs)]
    attributes = [_convert(k, v) for k, v in attrs.items() if v is not None]
    return ir.Node(domain, op, list(inputs), attributes, outputs=list(outputs), name=name,
                   metadata_props={PASS_KEY: pass_name})


def bnnc_node(graph: ir.Graph, op: str, inputs, name: str, pass_name: str, **kw: Any) -> ir.Node:
    return make_node(graph, op, inputs, name, pass_name, domain=BNNC_DOMAIN, **kw)


def is_std(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and is_std_domain(node.domain) and node.op_type in ops


def is_bnnc(node: ir.Node | None, *ops: str) -> bool:
    return node is not None and node.domain == BNNC_DOMAIN and node.op_type in ops


# -- edits --------------------------------------------------------------------------------------
def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value, rename: bool = False) -> None:
    """Make every reader of ``old`` read ``new``, which takes over the facts kept on ``old``.

    A graph output keeps its name: when ``old`` is one, ``new`` takes its place and its name in
    the outputs (an Identity keeps the name when ``new`` is a graph input, a constant or already
    an output). With ``rename`` (``new`` is a value the pass just made) ``new`` takes ``old``'s
    name in every case, so rewritten graphs keep the source model's tensor names.
    """
    new.meta.update(old.meta)
    if new.shape is None and old.shape is not None:
        new.shape, new.dtype = old.shape, old.dtype
    if old.is_graph_output():
        target = new
        if new.is_graph_input() or new.const_value is not None or new.is_graph_output():
            keep = ir.Node("", "Identity", [new], name=fresh_name(graph, f"{old.name}_keep_name"))
            graph.append(keep)
            target = keep.outputs[0]
            target.shape, target.dtype = new.shape, new.dtype
        for i, o in enumerate(graph.outputs):
            if o is old:
                graph.outputs[i] = target
        ir.convenience.replace_all_uses_with(old, new)
        new, rename = target, True
    else:
        ir.convenience.replace_all_uses_with(old, new)
    if rename:
        name = old.name
        old.name = fresh_name(graph, f"{name}_replaced")
        new.name = name


def replace_node(graph: ir.Graph, old: ir.Node, new: Sequence[ir.Node], outputs: Sequence[ir.Value | None]) -> None:
    """Put ``new`` where ``old`` stands, the readers of ``old.outputs[i]`` reading ``outputs[i]``."""
    graph.insert_before(old, list(new))
    made = {v for n in new for v in n.outputs}
    for o, n in zip(old.outputs, outputs):
        if n is not None and n is not o:
            replace_value(graph, o, n, rename=n in made)
    remove(graph, [old])


def adopt_name(new: ir.Node, old: ir.Node) -> None:
    """``new`` took ``old``'s place (``old`` is out of the graph): it takes its name too, so plan
    steps, reports and emitted code keep naming the source model's nodes."""
    assert old.graph is None, "the node to take the name of must be out of the graph"
    new.name = old.name


def remove(graph: ir.Graph, nodes: Iterable[ir.Node]) -> None:
    """Remove nodes that nothing reads any more (their inputs stop pointing at them)."""
    graph.remove(list(nodes), safe=True)


def prune(graph: ir.Graph) -> int:
    """Drop nodes whose outputs nobody reads and constants nobody uses; return nodes dropped."""
    dropped = 0
    for node in reversed(list(graph)):
        if not any(v.uses() or v.is_graph_output() for v in node.outputs):
            remove(graph, [node])
            dropped += 1
    for name, v in list(graph.initializers.items()):
        if not v.uses() and not v.is_graph_output() and not v.is_graph_input():
            del graph.initializers[name]
    return dropped


def name_nodes(graph: ir.Graph) -> None:
    """Give every unnamed node and value a stable name."""
    for i, n in enumerate(graph):
        if not n.name:
            n.name = fresh_name(graph, f"{n.op_type}_{i}")
        for k, v in enumerate(n.outputs):
            if v.name is None:  # "" is an optional output the node does not produce
                v.name = fresh_name(graph, f"{n.name}_out{k}" if k else f"{n.name}_out")


def op_counts(graph: ir.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph:
        counts[op_key(n)] = counts.get(op_key(n), 0) + 1
    return dict(sorted(counts.items()))
