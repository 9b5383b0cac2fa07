"""The in-memory IR: an ONNX graph held as plain Python objects that passes edit freely.

``Graph`` keeps the node list (``onnx.NodeProto``), the constants as numpy arrays, the graph
inputs and outputs, and the static shape and dtype of every value. Passes build new node lists
(never editing a list while iterating it) and call ``replace``; the pipeline runner re-sorts and
re-infers shapes after every pass. ``to_model()`` gives back an ``onnx.ModelProto`` for dumps,
Netron and onnxruntime.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.errors import BnncError

BNNC_DOMAIN = "bnnc"
BNNC_OPSET = 1

_NP_OF_ONNX = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.FLOAT16: "float16",
}
_ONNX_OF_NP = {v: k for k, v in _NP_OF_ONNX.items()}


def np_dtype(elem_type: int) -> str:
    if elem_type not in _NP_OF_ONNX:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise BnncError(f"tensor element type {name} is not supported")
    return _NP_OF_ONNX[elem_type]


def onnx_dtype(dtype: str) -> int:
    return _ONNX_OF_NP[str(np.dtype(dtype))]


def op_key(node: onnx.NodeProto) -> str:
    """The plan/kernel name of a node: "Conv" for standard ops, "bnnc.BinaryConv" otherwise."""
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain}.{node.op_type}"


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as plain Python values (bytes decoded, tensors as arrays)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    return attrs_of(node).get(name, default)


class Graph:
    """A mutable ONNX graph. See the module docstring."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.name = g.name or "model"
        self.opsets = {o.domain: o.version for o in model.opset_import}
        self.ir_version = model.ir_version
        self.producer = (model.producer_name, model.producer_version)
        self.metadata: dict[str, str] = {p.key: p.value for p in model.metadata_props}
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in g.initializer
        }
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.inputs: list[str] = [i.name for i in g.input if i.name not in self.consts]
        self.outputs: list[str] = [o.name for o in g.output]
        self.shapes: dict[str, tuple[int | str, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for vi in itertools.chain(g.input, g.value_info, g.output):
            self._take_value_info(vi)
        self._counter = itertools.count()

    # -- values -------------------------------------------------------------------------------
    def _take_value_info(self, vi: onnx.ValueInfoProto) -> None:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type == 0:
            return
        if t.elem_type in _NP_OF_ONNX:
            self.dtypes[vi.name] = _NP_OF_ONNX[t.elem_type]
        if t.HasField("shape"):
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
            )
            self.shapes[vi.name] = dims

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape of a value, or None when it is unknown or not fully static."""
        if name in self.consts:
            return tuple(self.consts[name].shape)
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return s

    def dtype(self, name: str) -> str | None:
        if name in self.consts:
            return str(self.consts[name].dtype)
        return self.dtypes.get(name)

    def set_value(self, name: str, shape: Iterable[int], dtype: str) -> None:
        self.shapes[name] = tuple(int(d) for d in shape)
        self.dtypes[name] = str(np.dtype(dtype))

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def add_const(self, array: np.ndarray, hint: str) -> str:
        name = self.unique_name(hint)
        self.consts[name] = np.asarray(array)
        return name

    def unique_name(self, hint: str) -> str:
        taken = self._all_names()
        if hint not in taken:
            return hint
        while True:
            cand = f"{hint}_{next(self._counter)}"
            if cand not in taken:
                return cand

    def _all_names(self) -> set[str]:
        names = set(self.consts) | set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            names.update(n.output)
            names.add(n.name)
        return names

    # -- structure ----------------------------------------------------------------------------
    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.nodes for o in n.output if o}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def replace(self, old: Iterable[onnx.NodeProto], new: Iterable[onnx.NodeProto]) -> None:
        """Remove the ``old`` nodes and insert ``new`` where the first of them stood."""
        old_ids = {id(n) for n in old}
        new = list(new)
        out: list[onnx.NodeProto] = []
        for n in self.nodes:
            if id(n) in old_ids:
                out.extend(new)
                new = []
            else:
                out.append(n)
        out.extend(new)
        self.nodes = out

    def rename_uses(self, old: str, new: str) -> None:
        """Make every reader of value ``old`` read ``new`` instead.

        Graph output names never change: when ``old`` is a graph output, the node producing
        ``new`` is renamed to produce ``old`` (or an Identity keeps the name when ``new`` is a
        graph input, a constant or another output).
        """
        for n in self.nodes:
            for i, x in enumerate(n.input):
                if x == old:
                    n.input[i] = new
        if old not in self.outputs:
            return
        prod = self.producers().get(new)
        if prod is None or new in self.outputs:
            self.nodes.append(helper.make_node("Identity", [new], [old], name=f"{old}_keep_name"))
            return
        for n in self.nodes:
            for i, x in enumerate(n.input):
                if x == new:
                    n.input[i] = old
        for i, x in enumerate(prod.output):
            if x == new:
                prod.output[i] = old
        if new in self.shapes:
            self.shapes[old] = self.shapes.pop(new)
        if new in self.dtypes:
            self.dtypes[old] = self.dtypes.pop(new)

    def toposort(self) -> None:
        """Order nodes so that every value is produced before it is read."""
        ready = set(self.consts) | set(self.inputs) | {""}
        pending = list(self.nodes)
        out: list[onnx.NodeProto] = []
        while pending:
            rest = []
            for n in pending:
                if all(i in ready for i in n.input):
                    out.append(n)
                    ready.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                names = ", ".join(repr(n.name) for n in rest[:5])
                raise BnncError(f"graph has a cycle or reads undefined values (nodes {names})")
            pending = rest
        self.nodes = out

    def prune(self) -> int:
        """Drop nodes whose outputs nobody reads and constants nobody uses; return nodes dropped."""
        live = set(self.outputs)
        kept: list[onnx.NodeProto] = []
        for n in reversed(self.nodes):
            if any(o in live for o in n.output):
                kept.append(n)
                live.update(i for i in n.input if i)
        dropped = len(self.nodes) - len(kept)
        self.nodes = kept[::-1]
        self.consts = {k: v for k, v in self.consts.items() if k in live}
        return dropped

    def name_nodes(self) -> None:
        """Give every unnamed node a stable name (op type and position)."""
        taken = {n.name for n in self.nodes if n.name}
        for i, n in enumerate(self.nodes):
            if not n.name:
                cand = f"{n.op_type}_{i}"
                while cand in taken:
                    cand += "_"
                n.name = cand
                taken.add(cand)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            k = op_key(n)
            counts[k] = counts.get(k, 0) + 1
        return dict(sorted(counts.items()))

    # -- conversion ---------------------------------------------------------------------------
    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        dtype = self.dtypes.get(name)
        elem = _ONNX_OF_NP.get(dtype, onnx.TensorProto.UNDEFINED) if dtype else 0
        shape = self.shapes.get(name)
        return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)

    def to_model(self, with_value_info: bool = True) -> onnx.ModelProto:
        produced = {o for n in self.nodes for o in n.output}
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in self.consts.items()]
        vis = []
        if with_value_info:
            vis = [self._value_info(v) for v in produced - set(self.outputs) if v in self.shapes or v in self.dtypes]
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [self._value_info(i) for i in self.inputs],
            [self._value_info(o) for o in self.outputs],
            initializer=inits,
            value_info=sorted(vis, key=lambda v: v.name),
        )
        opsets = dict(self.opsets)
        if any(n.domain == BNNC_DOMAIN for n in self.nodes):
            opsets.setdefault(BNNC_DOMAIN, BNNC_OPSET)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
            producer_name="bnnc",
        )
        model.ir_version = max(self.ir_version, 7)
        for k, v in self.metadata.items():
            model.metadata_props.add(key=k, value=v)
        return model

    def infer_shapes(self) -> None:
        """Fill in shapes and dtypes of standard-op values with ONNX shape inference.

        Values produced by custom ops must have been given a shape by the pass that made them;
        inference then carries on through the standard ops downstream of them.
        """
        try:
            inferred = onnx.shape_inference.infer_shapes(self.to_model(), data_prop=True)
        except Exception:  # inference is best effort; the lowering reports what stays unknown
            return
        for vi in itertools.chain(inferred.graph.value_info, inferred.graph.output):
            if vi.name not in self.shapes or self.shape(vi.name) is None:
                self._take_value_info(vi)
            elif vi.name not in self.dtypes:
                self._take_value_info(vi)
