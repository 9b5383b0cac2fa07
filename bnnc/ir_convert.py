"""Between the IR and ONNX protobuf: loading, saving, and ONNX shape inference on the IR.

``from_proto`` decodes every initializer once (onnx-ir would decode a protobuf-backed tensor on
every read); ``to_proto`` declares the bnnc domain only when bnnc ops are present;
``infer_shapes`` fills in only what the graph lacks, so shapes passes set on custom-op outputs
(which ONNX inference cannot see through) are never overwritten.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from bnnc.ir import BNNC_DOMAIN, BNNC_OPSET, shape
from bnnc.layers import manifest_metadata


def from_proto(model: onnx.ModelProto) -> ir.Model:
    m = ir.serde.deserialize_model(model)
    m.opset_imports.setdefault(BNNC_DOMAIN, BNNC_OPSET)
    for v in m.graph.initializers.values():
        # decoded once: a TensorProto-backed tensor decodes its bytes on every read
        v.const_value = ir.Tensor(v.const_value.numpy(), name=v.name)
        v.shape, v.dtype = v.const_value.shape, v.const_value.dtype
    return m


def to_proto(model: ir.Model, with_facts: bool = False) -> onnx.ModelProto:
    """The model as an ``onnx.ModelProto`` (IR version at least 7). ``with_facts`` adds the layer
    and bit-tensor tables to its metadata, as the artifact will store them (for dumps)."""
    if not any(n.domain == BNNC_DOMAIN for n in model.graph):
        model.opset_imports.pop(BNNC_DOMAIN, None)
    proto = ir.serde.serialize_model(model)
    model.opset_imports.setdefault(BNNC_DOMAIN, BNNC_OPSET)
    proto.ir_version = max(proto.ir_version, 7)
    if with_facts:
        for k, v in manifest_metadata(model.graph).items():
            proto.metadata_props.add(key=k, value=v)
    return proto


_BIG = 1024  # bytes: larger initializers travel to shape inference as typed inputs only


def untyped(graph: ir.Graph) -> bool:
    """Some value a node produces has no static shape or no dtype yet."""
    return any(v.name and (v.dtype is None or v.shape is None or not v.shape.is_static()) for n in graph for v in n.outputs)


def infer_shapes(model: ir.Model) -> None:
    """Fill in the shapes and dtypes that ONNX shape inference can tell and the graph lacks.

    Values made by custom ops must have been typed by the pass that made them; inference then
    carries on through the standard ops downstream. Known static shapes are never overwritten.
    """
    proto = to_proto(model)
    g = proto.graph
    big = [t for t in g.initializer if t.raw_data and len(t.raw_data) > _BIG]
    for t in big:
        g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    keep = [t for t in g.initializer if not (t.raw_data and len(t.raw_data) > _BIG)]
    del g.initializer[:]
    g.initializer.extend(keep)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError):
        return  # best effort: the lowering names any value whose shape stays unknown
    by_name = {v.name: v for n in model.graph for v in n.outputs if v.name}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        v = by_name.get(vi.name)
        if v is None or shape(v) is not None:
            continue
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type == 0:
            continue
        if v.dtype is None:
            v.dtype = ir.DataType(t.elem_type)
        if t.HasField("shape"):
            v.shape = ir.Shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim])
