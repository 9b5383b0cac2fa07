"""Execute an IR model node by node without the bnnc runtime: standard ops with onnxruntime
(graph optimizations off, one node at a time), bnnc ops with the numpy references of bnnc/ops.py
on unpacked tensors (packing and unpacking by runtime/bitpack.py). Slow and obvious on purpose:
the before/after tests of the passes compare graphs with it, so a pass is checked against the
op specifications (docs/binary_ops.md), not against the kernels."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnnc import ops
from bnnc.ir import attrs_of, const, is_std_domain
from bnnc.qonnx import run_onnx_nodes
from runtime.bitpack import pack_activation, unpack_activation, unpack_bits, unpack_dense


def run_reference(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph outputs of ``model`` on ``feeds``."""
    values: dict[str, np.ndarray] = {k: const(v) for k, v in model.graph.initializers.items()}
    values.update(feeds)
    opsets = {d: v for d, v in model.opset_imports.items() if is_std_domain(d)}
    for node in model.graph:
        names = [v.name for v in node.outputs if v.name]
        if is_std_domain(node.domain):
            outs = run_onnx_nodes([ir.serde.serialize_node(node)], values, names, opsets)
        else:
            ins = [values[v.name] if v is not None else None for v in node.inputs]
            outs = _BNNC[node.op_type](attrs_of(node), ins, len(node.outputs))
        values.update(zip(names, outs, strict=True))
    return [values[v.name] for v in model.graph.outputs]


def _packed(v: np.ndarray, n_outputs: int) -> list[np.ndarray]:
    """Logical {-1, 0, +1} values as the packed output(s): bits, and the mask when asked for."""
    bits, mask = pack_activation(v, with_mask=n_outputs > 1)
    return [bits] + ([mask] if n_outputs > 1 else [])


def _sign(a, ins, _n):
    x = ins[0]
    return [(ops.binarize(x, int(a.get("zero", 0))).astype(np.float32) * np.float32(a.get("scale", 1.0)))]


def _binarize(a, ins, n):
    return _packed(ops.binarize(ins[0], int(a["zero"])), n)


def _stage(a, s_fn, ins, n):
    """The output stage of BinaryConv/BinaryDense (s_fn(scale, bias, rule, output, residual))."""
    if a.get("output", "float") == "bits":
        return _packed(s_fn(None, None, ins[4], "bits", None), 1 + int(a.get("out_mask", 0)))
    residual = ins[6] if len(ins) > 6 else None
    y = s_fn(ins[4], ins[5], None, "float", residual)
    if "bits_zero" not in a:
        return [y]
    return [y] + _packed(ops.binarize(y, int(a["bits_zero"])), n - 1)


def _conv_geometry(a):
    return dict(strides=a.get("strides", [1, 1]), pads=a.get("pads", [0, 0, 0, 0]),
                dilations=a.get("dilations", [1, 1]), group=int(a.get("group", 1)))


def _binary_conv(a, ins, n):
    g = int(a.get("group", 1))
    x = unpack_activation(ins[0], int(a["cin"]), ins[1])
    w = unpack_dense(ins[2], (int(a["cout"]), int(a["cin"]) // g, *a["kernel_shape"]), ins[3])

    def s_fn(scale, bias, rule, output, residual):
        return ops.binary_conv(x, w, scale, bias, rule, pad_value=int(a.get("pad_value", 0)), output=output,
                               residual=residual, **_conv_geometry(a))

    return _stage(a, s_fn, ins, n)


def _binary_dense(a, ins, n):
    c, h, wd = (int(d) for d in a["in_chw"])
    words = ins[0].reshape(ins[0].shape[0], h, wd, -1)
    mask = ins[1].reshape(words.shape) if ins[1] is not None else None
    x = unpack_activation(words, c, mask)
    w = unpack_dense(ins[2], (int(a["cout"]), int(a["k"])), ins[3])

    def s_fn(scale, bias, rule, output, residual):
        return ops.binary_dense(x, w, scale, bias, rule, in_order=a.get("in_order", "chw"), output=output,
                                residual=residual)

    return _stage(a, s_fn, ins, n)


def _activation(a):
    """The fused activation of a binary-weight layer, as keyword arguments of its reference."""
    return dict(activation=a.get("activation", ""), activation_params=a.get("activation_params", ()))


def _binary_weight_conv(a, ins, _n):
    g = int(a.get("group", 1))
    w = unpack_dense(ins[1], (int(a["cout"]), int(a["cin"]) // g, *a["kernel_shape"]), ins[2])
    return [ops.binary_weight_conv(ins[0], w, ins[3], ins[4], **_conv_geometry(a), **_activation(a))]


def _binary_weight_dense(a, ins, _n):
    w = unpack_dense(ins[1], (int(a["cout"]), int(a["k"])), ins[2])
    return [ops.binary_weight_dense(ins[0], w, ins[3], ins[4], **_activation(a))]


def _bit_maxpool(a, ins, n):
    c = int(a["channels"])
    x = unpack_activation(ins[0], c, ins[1] if len(ins) > 1 else None)
    invert = unpack_bits(ins[2], c) if len(ins) > 2 and ins[2] is not None else None
    y = ops.bit_maxpool(x, a["kernel_shape"], a.get("strides"), a.get("pads", [0, 0, 0, 0]),
                        a.get("dilations", [1, 1]), int(a.get("ceil_mode", 0)), invert)
    return _packed(y, n)


_BNNC = {
    "Sign": _sign, "Binarize": _binarize, "BinaryConv": _binary_conv, "BinaryDense": _binary_dense,
    "BinaryWeightConv": _binary_weight_conv, "BinaryWeightDense": _binary_weight_dense, "BitMaxPool": _bit_maxpool,
}
