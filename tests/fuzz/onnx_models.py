"""Mutations of valid ONNX files for the loader (bnnc.loader.load_model), and its oracle.

Raw mutations change the serialized bytes (flips, truncation, random files); structural ones edit
the protobuf and re-serialize it: absurd or negative dims, wrong element types, initializers whose
dims disagree with their data, dangling or cyclic node inputs, unknown ops and domains, absurd
opset and IR versions, attributes of the wrong type, external data that points outside the model's
folder or past the end of a file. The oracle: load_model ends in a BnncError or returns a Graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.bnn_graphs import Builder
from tests.fuzz import artifacts as fa
from tests.fuzz.source import Source


def seed_models() -> list[bytes]:
    """Small valid models: a BNN with two binary convs, a binary MLP."""
    b = Builder(0)
    y = b.conv(b.sign("x"), b.pm1((4, 3, 3, 3)), pads=[1, 1, 1, 1])
    y = b.conv(b.sign(b.bn(y, 4), "larq"), b.pm1((2, 4, 3, 3)))
    conv = b.model([("x", ["N", 3, 6, 6])], [(y, None)])
    b = Builder(1)
    h = b.op("Gemm", [b.sign("x", "bitorch"), b.const(b.pm1((8, 5))), b.const(np.zeros(8, np.float32))], transB=1)
    out = b.op("MatMul", [b.sign(b.bn(h, 8, rank=2), "bipolar"), b.const(b.pm1((3, 8)).T.copy())])
    mlp = b.model([("x", [2, 5])], [(out, None)])
    return [m.SerializeToString() for m in (conv, mlp)]


def _structural(src: Source, raw: bytes) -> bytes:
    m = onnx.ModelProto()
    m.ParseFromString(raw)
    g = m.graph
    kind = src.choice(["dims", "elem", "init", "input", "cycle", "op", "opset", "attr", "external", "drop"])
    if kind == "dims":
        d = src.choice(list(g.input[0].type.tensor_type.shape.dim) + list(g.output[0].type.tensor_type.shape.dim))
        if src.coin():
            d.dim_value = src.choice([-1, 0, 10**12, 2**62, src.integer(-5, 50)])
        else:
            d.dim_param = src.choice(["", "N", "M", "?"])
    elif kind == "elem":
        src.choice([g.input[0], g.output[0]]).type.tensor_type.elem_type = src.integer(0, 30)
    elif kind == "init" and g.initializer:
        t = src.choice(list(g.initializer))
        if src.coin():
            t.dims[:] = src.choice([[10**12], [2**31, 2**31], [-1], [0], list(t.dims) + [2]])
        else:
            t.data_type = src.choice([0, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.BFLOAT16, 99, src.integer(0, 30)])
    elif kind == "input":
        n = src.choice(list(g.node))
        if n.input:
            n.input[src.integer(0, len(n.input) - 1)] = src.choice(["nowhere", ""] + [o for k in g.node for o in k.output])
    elif kind == "cycle":
        a, b = src.choice(list(g.node)), src.choice(list(g.node))
        if a.input and b.output:
            a.input[0] = b.output[0]
    elif kind == "op":
        n = src.choice(list(g.node))
        n.op_type = src.choice(["Nope", "", "Loop", "If", "Scan", "Conv", "Sign", "Resize", "NonZero"])
        if src.coin(1, 4):
            n.domain = src.choice(["com.microsoft", "qonnx.custom_op.general", "x"])
    elif kind == "opset":
        m.opset_import[0].version = src.choice([0, 1, 7, 10, 11, 22, 10**6, -1])
        if src.coin(1, 3):
            m.ir_version = src.choice([0, 1, 3, 10**6, -1])
    elif kind == "attr":
        n = src.choice([k for k in g.node if k.attribute] or list(g.node))
        if n.attribute:
            a = src.choice(list(n.attribute))
            new = helper.make_attribute(a.name, src.choice([10**12, -1, 0, 1.5, "s", [10**12, 1], [-5, -5], [1.0, 2.0]]))
            a.CopyFrom(new)
    elif kind == "external" and g.initializer:
        t = src.choice(list(g.initializer))
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", src.choice(["../../etc/passwd", "/etc/passwd", "missing.bin", "model.onnx", ""])),
                     ("offset", str(src.choice([0, -1, 10**12]))), ("length", str(src.choice([4, 10**12, -4])))):
            e = t.external_data.add()
            e.key, e.value = k, v
    else:
        del g.node[src.integer(0, len(g.node) - 1)]
    return m.SerializeToString()


def mutate(src: Source, raw: bytes) -> tuple[str, bytes]:
    """One mutant of a serialized model: raw byte mutations or a protobuf edit."""
    if src.coin():
        m = src.choice([fa.truncate, fa.overwrite, fa.insert_or_delete, _flip, fa.random_file])
        return m.__name__, m(src, raw)
    return "structural", _structural(src, raw)


def _flip(src: Source, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(src.integer(1, 8)):
        b[src.integer(0, len(b) - 1)] ^= 1 << src.integer(0, 7)
    return bytes(b)


def load(path: str) -> str:
    """The oracle: 'refused' (a BnncError) or 'loaded'; anything else propagates as a bug."""
    from bnnc.loader import load_model
    from runtime.errors import BnncError

    try:
        load_model(path)
    except BnncError:
        return "refused"
    return "loaded"
