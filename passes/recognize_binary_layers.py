"""Turn every Conv, Gemm and MatMul with binary weights into a bnnc binary layer.

For a layer ``y = W * x + b`` whose constant weights are ±alpha_c per output channel (see
bnnc.weights) write W = alpha_c * B with B in {-1, +1} (ternary: {-1, 0, +1}). When x is
``scale * sign_z(u)`` seen through MaxPool, constant Pad and, for linear layers, the
Transpose/Reshape/Flatten of a flatten, then ``y_c = alpha_c * scale * s_c + b_c`` with the exact
integer ``s = dot(B, sign_z(u))``, so the layer becomes

    Binarize(u) -> [BitMaxPool] -> BinaryConv/BinaryDense(output="float",
                                                         scale = alpha*scale, bias = b)

(XNOR mode; ternary weights add a mask bitplane). A Pad of value ±scale folds into the conv as
one-padding (``pad_value``), a Pad of 0 into its zero padding. When x is real the layer runs in
binary-weight mode (BinaryWeightConv/BinaryWeightDense). Everything else stays float, and the
reason is recorded in the layer table (bnnc.layers) and in the pass reasons.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnnc.ir import (
    add_const,
    adopt_name,
    attrs_of,
    bnnc_node,
    const,
    is_bnnc,
    is_std,
    make_node,
    new_value,
    node_attr,
    prune,
    replace_node,
    scalar,
    set_type,
    shape,
)
from bnnc.layers import LayerFacts, record_bits, set_layer
from bnnc.ops import packed_shape
from bnnc.pipeline import Pass, PassResult
from bnnc.weights import classify, layer_bias, weight_matrix
from runtime.bitpack import pack_dense

NAME = "recognize-binary-layers"
_FLATTENERS = ("Transpose", "Reshape", "Flatten")


def trace_binary_input(x: ir.Value, dense: bool) -> tuple[ir.Node | None, list[ir.Node]]:
    """Walk from a layer's data input back to a bnnc.Sign through layout ops.

    Returns (sign node, ops from the sign towards the layer), or (None, []) for a real input.
    """
    chain: list[ir.Node] = []
    node = x.producer()
    allowed = ("MaxPool", "Pad") + (_FLATTENERS if dense else ())
    while node is not None and not is_bnnc(node, "Sign"):
        if not is_std(node, *allowed) or len(node.outputs) != 1:
            return None, []
        chain.append(node)
        node = node.inputs[0].producer()
    return (node, chain[::-1]) if node is not None else (None, [])


class RecognizeBinaryLayers(Pass):
    name = NAME

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        stats = {"xnor": 0, "binary-weight": 0, "ternary": 0, "float": 0}
        reasons: list[str] = []
        binarized: dict[tuple[ir.Value, int], tuple[ir.Value, ir.Value | None]] = {}
        for node in list(graph):
            if not is_std(node, "Conv", "Gemm", "MatMul"):
                continue
            mode, why = _Rewrite(graph, node, binarized, sum(stats.values())).run()
            stats[mode] += 1
            if why:
                reasons.append(f"{node.name} ({node.op_type}) stays float: {why}")
        prune(graph)
        modified = any(stats[k] for k in ("xnor", "binary-weight", "ternary"))
        return PassResult(model, modified, stats, reasons)


class _Rewrite:
    """The rewrite of one layer (see the module docstring)."""

    def __init__(self, graph: ir.Graph, node: ir.Node, binarized: dict, order: int):
        self.g, self.node, self.binarized, self.order = graph, node, binarized, order
        self.dense = node.op_type != "Conv"
        self.out_shape = shape(node.outputs[0])
        self.packed_bytes = 0
        self.bits: tuple | None = None  # (key, bits, mask, record_bits arguments), kept on success

    def run(self) -> tuple[str, str]:
        node = self.node
        w, why = weight_matrix(node)
        facts = LayerFacts(name=node.name, op=node.op_type, macs=self._macs(w),
                           weight_bytes=int(w.size * 4) if w is not None else 0, order=self.order)
        if w is None or self.out_shape is None:
            return self._float(facts, why or "output shape unknown")
        wc = classify(w)
        facts.weight_deviation = wc.deviation
        bias, why = layer_bias(node, w.shape[0])
        if wc.kind == "float" or bias is None:
            return self._float(facts, wc.reason or why)
        sign, chain = trace_binary_input(node.inputs[0], self.dense)
        try:
            if sign is None:
                mode, new = "binary-weight", self._binary_weight(w, wc, bias)
            else:
                mode = "ternary" if wc.kind == "ternary" else "xnor"
                new = self._xnor_nodes(w, wc, bias, sign, chain)
        except _Unsupported as e:
            return self._float(facts, str(e))
        facts.mode, facts.packed_weight_bytes = mode, self.packed_bytes
        set_layer(new[-1], facts)
        if self.bits is not None:
            key, bits, mask, source, zero, channels = self.bits
            self.binarized[key] = (bits, mask)
            record_bits(bits, source, zero, channels, node.name)
        replace_node(self.g, node, new, new[-1].outputs)
        adopt_name(new[-1], node)
        return mode, ""

    def _float(self, facts: LayerFacts, why: str) -> tuple[str, str]:
        facts.mode, facts.reason, facts.packed_weight_bytes = "float", why, facts.weight_bytes
        set_layer(self.node, facts)
        return "float", why

    def _macs(self, w: np.ndarray | None) -> int:
        if w is None or self.out_shape is None:
            return 0
        return int(np.prod(self.out_shape)) * int(np.prod(w.shape[1:]))

    def _weights(self, wc) -> tuple[ir.Value, ir.Value | None]:
        """The packed sign bits (and the nonzero bitplane of ternary weights), runtime/bitpack.py."""
        values = np.where(wc.negative, -1, 1) if wc.nonzero is None else np.where(wc.nonzero, np.where(wc.negative, -1, 1), 0)
        bits, mask = pack_dense(values, with_mask=wc.nonzero is not None)
        prefix = self.node.name
        wbits = add_const(self.g, bits, prefix + "_wbits")
        wmask = add_const(self.g, mask, prefix + "_wmask") if mask is not None else None
        self.packed_bytes = int(bits.nbytes + (mask.nbytes if mask is not None else 0))
        return wbits, wmask

    def _binary_weight(self, w, wc, bias) -> list[ir.Node]:
        g, node = self.g, self.node
        wbits, wmask = self._weights(wc)
        scale = add_const(g, wc.alpha.astype(np.float32) * self._gemm_alpha(), node.name + "_scale")
        b = add_const(g, bias, node.name + "_bias")
        attrs = self._conv_attrs(w) if not self.dense else {"k": int(w.shape[1])}
        attrs.update(cout=int(w.shape[0]), macs=self._macs(w))
        op = "BinaryWeightDense" if self.dense else "BinaryWeightConv"
        out = self._output()
        return [bnnc_node(g, op, [node.inputs[0], wbits, wmask, scale, b], node.name, NAME, outputs=[out], **attrs)]

    def _output(self) -> ir.Value:
        y = self.node.outputs[0]
        return new_value(self.g, y.name + "_binary", self.out_shape, "float32")

    def _gemm_alpha(self) -> np.float32:
        return np.float32(node_attr(self.node, "alpha", 1.0)) if self.node.op_type == "Gemm" else np.float32(1)

    def _conv_attrs(self, w) -> dict:
        a = attrs_of(self.node)
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise _Unsupported("auto_pad SAME is not supported for binary layers")
        return {
            "kernel_shape": list(w.shape[2:]),
            "strides": list(a.get("strides", [1, 1])),
            "pads": list(a.get("pads", [0, 0, 0, 0])),
            "dilations": list(a.get("dilations", [1, 1])),
            "group": int(a.get("group", 1)),
            "cin": int(w.shape[1]) * int(a.get("group", 1)),
        }

    def _xnor_nodes(self, w, wc, bias, sign, chain) -> list[ir.Node]:
        g, node = self.g, self.node
        sign_scale = float(node_attr(sign, "scale", 1.0))
        zero = int(node_attr(sign, "zero", 0))
        pad_value, extra_pads, chain = self._take_pad(chain, sign_scale)
        u = sign.inputs[0]
        nodes, bits, mask = self._binarize(u, zero)
        nodes_pool, bits, mask = self._packed_chain(chain, bits, mask, shape(u))
        nodes += nodes_pool
        wbits, wmask = self._weights(wc)
        scale = add_const(g, (wc.alpha * sign_scale).astype(np.float32) * self._gemm_alpha(), node.name + "_scale")
        b = add_const(g, bias, node.name + "_bias")
        attrs = {"cout": int(w.shape[0]), "output": "float", "out_mask": 0, "macs": self._macs(w)}
        if self.dense:
            attrs.update(self._dense_layout(chain, shape(u), w.shape[1]))
            op = "BinaryDense"
        else:
            attrs.update(self._conv_attrs(w))
            attrs["pads"] = [p + e for p, e in zip(attrs["pads"], extra_pads)]
            attrs["pad_value"] = pad_value
            op = "BinaryConv"
        inputs = [bits, mask, wbits, wmask, scale, b]
        nodes.append(bnnc_node(g, op, inputs, node.name, NAME, outputs=[self._output()], **attrs))
        return nodes

    def _take_pad(self, chain, sign_scale):
        """A constant Pad right before a conv folds into the conv's padding."""
        if not chain or not is_std(chain[-1], "Pad"):
            if any(is_std(n, "Pad") for n in chain):
                raise _Unsupported("Pad before another layout op")
            return 0, [0, 0, 0, 0], chain
        pad = chain[-1]
        if self.dense:
            raise _Unsupported("Pad before a linear layer")
        ins = list(pad.inputs)
        pads = const(ins[1]) if len(ins) > 1 else np.array(node_attr(pad, "pads", []))
        value = scalar(ins[2]) if len(ins) > 2 and ins[2] is not None else float(node_attr(pad, "value", 0.0))
        if pads is None or value is None or node_attr(pad, "mode", "constant") != "constant" or len(ins) > 3:
            raise _Unsupported("Pad is not a constant pad with constant amounts")
        pads = [int(p) for p in pads]
        if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            raise _Unsupported("Pad touches the batch or channel axis")
        ratio = value / sign_scale
        if ratio not in (0.0, 1.0, -1.0):
            raise _Unsupported(f"Pad value {value} is neither 0 nor ±{abs(sign_scale)}")
        if any(is_std(n, "Pad") for n in chain[:-1]):
            raise _Unsupported("two Pads before a conv")
        conv_pads = [int(p) for p in node_attr(self.node, "pads", [0, 0, 0, 0])]
        if ratio != 0 and any(conv_pads):
            raise _Unsupported("a ±1 Pad followed by a zero-padded conv")
        return int(ratio), [pads[2], pads[3], pads[6], pads[7]], chain[:-1]

    def _binarize(self, u: ir.Value, zero: int):
        key = (u, zero)
        g, s = self.g, shape(u)
        if key in self.binarized:
            bits, mask = self.binarized[key]
            self.bits = (key, bits, mask, u.name, zero, int(s[1]))
            return [], bits, mask
        if s is None or len(s) not in (2, 4):
            raise _Unsupported("binarized tensor is not 2-D or 4-D")
        outs = [new_value(g, u.name + "_bits", packed_shape(s), "uint64")]
        if zero == 0:
            outs.append(new_value(g, u.name + "_nonzero", packed_shape(s), "uint64"))
        node = bnnc_node(g, "Binarize", [u], u.name + "_binarize", NAME, outputs=outs, zero=zero)
        bits, mask = outs[0], (outs[1] if zero == 0 else None)
        self.bits = (key, bits, mask, u.name, zero, int(s[1]))
        return [node], bits, mask

    def _packed_chain(self, chain, bits, mask, s):
        """MaxPools run on the bits; the flatten (dense) is described by attributes instead."""
        nodes: list[ir.Node] = []
        for op in chain:
            if not is_std(op, "MaxPool"):
                break
            out_shape = shape(op.outputs[0])
            if len(s) != 4 or out_shape is None:
                raise _Unsupported("MaxPool on a tensor that is not 4-D")
            a = attrs_of(op)
            if a.get("auto_pad", "NOTSET") != "NOTSET" or len(op.outputs) > 1:
                raise _Unsupported("MaxPool with auto_pad or indices")
            y = op.outputs[0].name
            outs = [new_value(self.g, y + "_bits", packed_shape(out_shape), "uint64")]
            if mask is not None:
                outs.append(new_value(self.g, y + "_nonzero", packed_shape(out_shape), "uint64"))
            attrs = {k: list(a[k]) for k in ("kernel_shape", "strides", "pads", "dilations") if k in a}
            nodes.append(bnnc_node(self.g, "BitMaxPool", [bits, mask], op.name + "_bits", NAME, outputs=outs,
                                   ceil_mode=int(a.get("ceil_mode", 0)), channels=int(s[1]), **attrs))
            bits, mask, s = outs[0], (outs[1] if mask is not None else None), out_shape
        rest = chain[len(nodes):]
        if any(is_std(n, "MaxPool") for n in rest):
            raise _Unsupported("MaxPool after a Transpose or Reshape")
        if rest and not self.dense:
            raise _Unsupported(f"{rest[0].op_type} between the binarizer and the conv")
        if self.dense and len(s) == 4:
            flat = [s[0], int(np.prod(packed_shape(s)[1:]))]
            flat_vals = []
            for v in (bits, mask):
                if v is None:
                    flat_vals.append(None)
                    continue
                shp = add_const(self.g, np.array(flat, np.int64), v.name + "_flat_shape")
                node = make_node(self.g, "Reshape", [v, shp], v.name + "_flat", NAME,
                                 outputs=[set_type(new_value(self.g, v.name + "_flat"), flat, "uint64")])
                nodes.append(node)
                flat_vals.append(node.outputs[0])
            bits, mask = flat_vals
        return nodes, bits, mask

    def _dense_layout(self, chain, s, k) -> dict:
        """How the flattened logical input relates to the packed layout ("chw" or "hwc")."""
        pools = [n for n in chain if is_std(n, "MaxPool")]
        if pools:
            s = shape(pools[-1].outputs[0])
        if len(s) == 2:
            return {"k": int(s[1]), "in_chw": [int(s[1]), 1, 1], "in_order": "chw"}
        _, c, h, w = s
        idx = np.arange(c * h * w).reshape(1, c, h, w)
        for op in chain[len(pools):]:
            if op.op_type == "Transpose":
                perm = list(node_attr(op, "perm", list(range(idx.ndim))[::-1]))
                if perm[0] != 0:
                    raise _Unsupported("Transpose moves the batch axis")
                idx = idx.transpose(perm)
            else:
                idx = idx.reshape([1] + [int(d) for d in shape(op.outputs[0])[1:]])
        flat = idx.reshape(-1)
        if flat.size != k or idx.shape[0] != 1:
            raise _Unsupported("flatten does not produce the linear layer's input")
        if np.array_equal(flat, np.arange(c * h * w)):
            order = "chw"
        elif np.array_equal(flat, np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)):
            order = "hwc"
        else:
            raise _Unsupported("flatten order is neither CHW nor HWC")
        return {"k": int(k), "in_chw": [int(c), int(h), int(w)], "in_order": order}


class _Unsupported(Exception):
    """A binary layer the rewrite cannot express; the message is the reason it stays float."""
