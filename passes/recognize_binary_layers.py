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
import onnx

from bnnc.graph import Graph, attrs_of, node_attr
from bnnc.layers import record_bits, set_layer
from bnnc.matching import bnnc_node, is_bnnc, is_std, scalar, std_node
from bnnc.ops import packed_shape
from bnnc.pipeline import Pass, PassResult
from bnnc.weights import classify, pack_dense

NAME = "recognize-binary-layers"
_FLATTENERS = ("Transpose", "Reshape", "Flatten")


def weight_matrix(graph: Graph, node: onnx.NodeProto) -> tuple[np.ndarray | None, str]:
    """The layer's weights as [Cout, ...] (Conv layout or [Cout, K]), or a reason."""
    w = graph.const(node.input[1])
    if w is None:
        return None, "weights are not constant"
    if node.op_type == "Conv":
        return (w, "") if w.ndim == 4 else (None, f"{w.ndim - 2}-D convolution")
    if w.ndim != 2:
        return None, f"weights have rank {w.ndim}"
    if node.op_type == "Gemm":
        if node_attr(node, "transA", 0):
            return None, "Gemm with transA=1"
        return (w if node_attr(node, "transB", 0) else w.T), ""
    shape = graph.shape(node.input[0])
    if shape is None or len(shape) != 2:
        return None, "MatMul input is not 2-D"
    return w.T, ""


def layer_bias(graph: Graph, node: onnx.NodeProto, cout: int) -> tuple[np.ndarray | None, str]:
    if node.op_type == "MatMul" or len(node.input) < 3 or not node.input[2]:
        return np.zeros(cout, np.float32), ""
    b = graph.const(node.input[2])
    if b is None:
        return None, "bias is not constant"
    if node.op_type == "Gemm":
        b = b * np.float32(node_attr(node, "beta", 1.0))
        if b.size not in (1, cout) or (b.ndim == 2 and b.shape[0] != 1):
            return None, "Gemm C is not a per-output-channel bias"
    return np.broadcast_to(b.reshape(-1), (cout,)).astype(np.float32), ""


def trace_binary_input(graph: Graph, prods: dict, x: str, dense: bool):
    """Walk from a layer's data input back to a bnnc.Sign through layout ops.

    Returns (sign node, ops from the sign towards the layer, reason-or-empty) or (None, [], why).
    """
    chain: list[onnx.NodeProto] = []
    node = prods.get(x)
    allowed = ("MaxPool", "Pad") + (_FLATTENERS if dense else ())
    while node is not None and not is_bnnc(node, "Sign"):
        if not is_std(node, *allowed) or len(node.output) != 1:
            return None, [], "input is real-valued"
        chain.append(node)
        node = prods.get(node.input[0])
    if node is None:
        return None, [], "input is real-valued"
    return node, chain[::-1], ""


class RecognizeBinaryLayers(Pass):
    name = NAME

    def call(self, graph: Graph) -> PassResult:
        stats = {"xnor": 0, "binary-weight": 0, "ternary": 0, "float": 0}
        reasons: list[str] = []
        binarized: dict[tuple[str, int], tuple[str, str]] = {}
        for node in list(graph.nodes):
            if not is_std(node, "Conv", "Gemm", "MatMul"):
                continue
            mode, why = _Rewrite(graph, node, binarized).run()
            stats[mode] += 1
            if why:
                reasons.append(f"{node.name} ({node.op_type}) stays float: {why}")
        graph.prune()
        modified = any(stats[k] for k in ("xnor", "binary-weight", "ternary"))
        return PassResult(modified=modified, stats=stats, reasons=reasons)


class _Rewrite:
    """The rewrite of one layer (see the module docstring)."""

    def __init__(self, graph: Graph, node: onnx.NodeProto, binarized: dict):
        self.g, self.node, self.binarized = graph, node, binarized
        self.dense = node.op_type != "Conv"
        self.out_shape = graph.shape(node.output[0])

    def run(self) -> tuple[str, str]:
        g, node = self.g, self.node
        w, why = weight_matrix(g, node)
        macs = self._macs(w)
        record = {"name": node.name, "op": node.op_type, "macs": macs, "weight_deviation": None,
                  "weight_bytes": int(w.size * 4) if w is not None else 0, "packed_weight_bytes": 0}
        if w is None or self.out_shape is None:
            return self._float(record, why or "output shape unknown")
        wc = classify(w)
        record["weight_deviation"] = wc.deviation
        bias, why = layer_bias(g, node, w.shape[0])
        if wc.kind == "float" or bias is None:
            return self._float(record, wc.reason or why)
        sign, chain, _ = trace_binary_input(g, g.producers(), node.input[0], self.dense)
        self.packed_bytes = 0
        try:
            if sign is None:
                mode, new = "binary-weight", self._binary_weight(w, wc, bias)
            else:
                mode = "ternary" if wc.kind == "ternary" else "xnor"
                new = self._xnor_nodes(w, wc, bias, sign, chain)
        except _Unsupported as e:
            return self._float(record, str(e))
        g.replace([node], new)
        record.update(mode=mode, reason="", packed_weight_bytes=self.packed_bytes)
        set_layer(g, record)
        return mode, ""

    def _float(self, record: dict, why: str) -> tuple[str, str]:
        record.update(mode="float", reason=why, packed_weight_bytes=record["weight_bytes"])
        set_layer(self.g, record)
        return "float", why

    def _macs(self, w: np.ndarray | None) -> int:
        if w is None or self.out_shape is None:
            return 0
        per_out = int(np.prod(w.shape[1:]))
        return int(np.prod(self.out_shape)) * per_out

    def _weights(self, wc, prefix: str) -> tuple[str, str]:
        g = self.g
        bits = g.add_const(pack_dense(wc.negative), prefix + "_wbits")
        mask = g.add_const(pack_dense(wc.nonzero), prefix + "_wmask") if wc.nonzero is not None else ""
        self.packed_bytes = int(g.consts[bits].nbytes + (g.consts[mask].nbytes if mask else 0))
        return bits, mask

    def _binary_weight(self, w, wc, bias) -> list[onnx.NodeProto]:
        g, node = self.g, self.node
        wbits, wmask = self._weights(wc, node.name)
        scale = g.add_const(wc.alpha.astype(np.float32) * self._gemm_alpha(), node.name + "_scale")
        b = g.add_const(bias, node.name + "_bias")
        attrs = self._conv_attrs(w) if not self.dense else {"k": int(w.shape[1])}
        attrs["cout"] = int(w.shape[0])
        attrs["macs"] = self._macs(w)
        op = "BinaryWeightDense" if self.dense else "BinaryWeightConv"
        return [bnnc_node(op, [node.input[0], wbits, wmask, scale, b], [node.output[0]], node.name, NAME, **attrs)]

    def _gemm_alpha(self) -> np.float32:
        return np.float32(node_attr(self.node, "alpha", 1.0)) if self.node.op_type == "Gemm" else np.float32(1)

    def _conv_attrs(self, w) -> dict:
        a = attrs_of(self.node)
        k = list(w.shape[2:])
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise _Unsupported("auto_pad SAME is not supported for binary layers")
        return {
            "kernel_shape": k,
            "strides": list(a.get("strides", [1, 1])),
            "pads": list(a.get("pads", [0, 0, 0, 0])),
            "dilations": list(a.get("dilations", [1, 1])),
            "group": int(a.get("group", 1)),
            "cin": int(w.shape[1]) * int(a.get("group", 1)),
        }

    def _xnor_nodes(self, w, wc, bias, sign, chain) -> list[onnx.NodeProto]:
        g, node = self.g, self.node
        sign_scale = float(node_attr(sign, "scale", 1.0))
        zero = int(node_attr(sign, "zero", 0))
        pad_value, extra_pads, chain = self._take_pad(chain, sign_scale)
        nodes, bits, mask = self._binarize(sign.input[0], zero)
        nodes_pool, bits, mask = self._packed_chain(chain, bits, mask, g.shape(sign.input[0]))
        nodes += nodes_pool
        wbits, wmask = self._weights(wc, node.name)
        scale = g.add_const((wc.alpha * sign_scale).astype(np.float32) * self._gemm_alpha(), node.name + "_scale")
        b = g.add_const(bias, node.name + "_bias")
        attrs = {"cout": int(w.shape[0]), "output": "float", "out_mask": 0, "macs": self._macs(w)}
        if self.dense:
            attrs.update(self._dense_layout(chain, g.shape(sign.input[0]), w.shape[1]))
            op = "BinaryDense"
        else:
            attrs.update(self._conv_attrs(w))
            attrs["pads"] = [p + e for p, e in zip(attrs["pads"], extra_pads)]
            attrs["pad_value"] = pad_value
            op = "BinaryConv"
        inputs = [bits, mask, wbits, wmask, scale, b]
        nodes.append(bnnc_node(op, inputs, [node.output[0]], node.name, NAME, **attrs))
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
        pads = self.g.const(pad.input[1]) if len(pad.input) > 1 else np.array(node_attr(pad, "pads", []))
        value = scalar(self.g, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else float(node_attr(pad, "value", 0.0))
        if pads is None or value is None or node_attr(pad, "mode", "constant") != "constant" or len(pad.input) > 3:
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

    def _binarize(self, u: str, zero: int):
        key = (u, zero)
        if key in self.binarized:
            bits, mask = self.binarized[key]
            record_bits(self.g, bits, u, zero, int(self.g.shape(u)[1]), mask, self.node.name)
            return [], bits, mask
        g = self.g
        shape = g.shape(u)
        if shape is None or len(shape) not in (2, 4):
            raise _Unsupported("binarized tensor is not 2-D or 4-D")
        bits = g.unique_name(u + "_bits")
        outs = [bits]
        g.set_value(bits, packed_shape(shape), "uint64")
        mask = ""
        if zero == 0:
            mask = g.unique_name(u + "_nonzero")
            g.set_value(mask, packed_shape(shape), "uint64")
            outs.append(mask)
        node = bnnc_node("Binarize", [u], outs, g.unique_name(u + "_binarize"), NAME, zero=zero)
        self.binarized[key] = (bits, mask)
        record_bits(g, bits, u, zero, int(shape[1]), mask, self.node.name)
        return [node], bits, mask

    def _packed_chain(self, chain, bits, mask, shape):
        """MaxPools run on the bits; the flatten (dense) is described by attributes instead."""
        nodes = []
        for op in chain:
            if not is_std(op, "MaxPool"):
                break
            out_shape = self.g.shape(op.output[0])
            if len(shape) != 4 or out_shape is None:
                raise _Unsupported("MaxPool on a tensor that is not 4-D")
            a = attrs_of(op)
            if a.get("auto_pad", "NOTSET") != "NOTSET" or len(op.output) > 1:
                raise _Unsupported("MaxPool with auto_pad or indices")
            nb = self.g.unique_name(op.output[0] + "_bits")
            outs = [nb]
            self.g.set_value(nb, packed_shape(out_shape), "uint64")
            if mask:
                nm = self.g.unique_name(op.output[0] + "_nonzero")
                self.g.set_value(nm, packed_shape(out_shape), "uint64")
                outs.append(nm)
            attrs = {k: list(a[k]) for k in ("kernel_shape", "strides", "pads", "dilations") if k in a}
            nodes.append(bnnc_node("BitMaxPool", [bits, mask], outs, op.name + "_bits", NAME,
                                   ceil_mode=int(a.get("ceil_mode", 0)), channels=int(shape[1]), **attrs))
            bits, mask, shape = nb, (outs[1] if mask else ""), out_shape
        rest = chain[len(nodes):]
        if any(is_std(n, "MaxPool") for n in rest):
            raise _Unsupported("MaxPool after a Transpose or Reshape")
        if rest and not self.dense:
            raise _Unsupported(f"{rest[0].op_type} between the binarizer and the conv")
        if self.dense and len(shape) == 4:
            flat = [shape[0], int(np.prod(packed_shape(shape)[1:]))]
            for name in (bits, mask):
                if name:
                    out = self.g.unique_name(name + "_flat")
                    shp = self.g.add_const(np.array(flat, np.int64), out + "_shape")
                    self.g.set_value(out, flat, "uint64")
                    nodes.append(std_node("Reshape", [name, shp], [out], out, NAME))
                    bits, mask = (out, mask) if name == bits else (bits, out)
        return nodes, bits, mask

    def _dense_layout(self, chain, shape, k) -> dict:
        """How the flattened logical input relates to the packed layout ("chw" or "hwc")."""
        pools = [n for n in chain if is_std(n, "MaxPool")]
        if pools:
            shape = self.g.shape(pools[-1].output[0])
        if len(shape) == 2:
            return {"k": int(shape[1]), "in_chw": [int(shape[1]), 1, 1], "in_order": "chw"}
        _, c, h, w = shape
        idx = np.arange(c * h * w).reshape(1, c, h, w)
        for op in chain[len(pools):]:
            out = self.g.shape(op.output[0])
            if op.op_type == "Transpose":
                perm = list(node_attr(op, "perm", list(range(idx.ndim))[::-1]))
                if perm[0] != 0:
                    raise _Unsupported("Transpose moves the batch axis")
                idx = idx.transpose(perm)
            else:
                idx = idx.reshape([1] + [int(d) for d in out[1:]])
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
