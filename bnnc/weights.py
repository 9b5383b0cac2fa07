"""Classify constant weights as binary (±alpha_c), ternary ({-a_c, 0, +a_c}) or float.

``weight_matrix`` and ``layer_bias`` read a Conv/Gemm/MatMul's constant weights as [Cout, ...]
and its bias as [Cout] (Gemm's transB, alpha and beta applied), or say why they cannot.

Per output channel c (axis 0 of W reshaped to [Cout, -1]): alpha_c = mean |W_c|; the weights are
binary when every |w| is within ``tol`` (relative) of alpha_c, ternary when every w is either 0
(|w| <= tol * alpha_c) or within tol of alpha_c and some are 0. Exporters leave weights an ulp
or two off ±alpha and fold BatchNorm into them (negative factors flip signs, not magnitudes),
so the default tolerance is 1e-4; the measured deviation is reported by ``bnnc inspect``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from bnnc.ir import const, node_attr, shape

DEFAULT_TOL = 1e-4
MIN_BINARY_FAN_IN = 4  # fewer weights per channel than this are trivially "±alpha": keep float


@dataclass
class WeightClass:
    kind: str  # "binary", "ternary" or "float"
    alpha: np.ndarray  # float64 [Cout]
    negative: np.ndarray  # bool, W < 0, shape of W
    nonzero: np.ndarray | None  # bool, ternary only
    deviation: float  # max relative deviation of |w| from alpha_c over nonzero weights
    reason: str = ""


def classify(w: np.ndarray, tol: float = DEFAULT_TOL) -> WeightClass:
    w64 = np.asarray(w, dtype=np.float64)
    flat = np.abs(w64.reshape(w64.shape[0], -1))
    nonzero_mask = flat > 0
    big = flat.max(axis=1, keepdims=True)
    zero_like = flat <= tol * big
    counts = np.maximum((~zero_like).sum(axis=1, keepdims=True), 1)
    alpha = np.where(~zero_like, flat, 0).sum(axis=1, keepdims=True) / counts
    safe = np.where(alpha > 0, alpha, 1)
    dev_all = np.abs(flat - alpha) / safe
    dev_nonzero = float(np.max(np.where(zero_like, 0, dev_all))) if flat.size else 0.0
    negative = w64 < 0
    has_zeros = bool(np.any(zero_like & (big > 0)))
    if flat.shape[1] < MIN_BINARY_FAN_IN:
        return WeightClass("float", alpha[:, 0], negative, None, dev_nonzero,
                           f"only {flat.shape[1]} weights per output channel")
    if dev_nonzero > tol:
        return WeightClass("float", alpha[:, 0], negative, None, dev_nonzero,
                           f"weights are not ±alpha per output channel (max deviation {dev_nonzero:.1%})")
    if not has_zeros:
        return WeightClass("binary", alpha[:, 0], negative, None, dev_nonzero)
    nonzero = (~zero_like).reshape(w64.shape) & nonzero_mask.reshape(w64.shape)
    return WeightClass("ternary", alpha[:, 0], negative & nonzero, nonzero, dev_nonzero)


def weight_matrix(node: ir.Node) -> tuple[np.ndarray | None, str]:
    """The layer's weights as [Cout, ...] (Conv layout or [Cout, K]), or a reason."""
    w = const(node.inputs[1])
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
    s = shape(node.inputs[0])
    if s is None or len(s) != 2:
        return None, "MatMul input is not 2-D"
    return w.T, ""


def layer_bias(node: ir.Node, cout: int) -> tuple[np.ndarray | None, str]:
    if node.op_type == "MatMul" or len(node.inputs) < 3 or node.inputs[2] is None:
        return np.zeros(cout, np.float32), ""
    b = const(node.inputs[2])
    if b is None:
        return None, "bias is not constant"
    if node.op_type == "Gemm":
        b = b * np.float32(node_attr(node, "beta", 1.0))
        if b.size not in (1, cout) or (b.ndim == 2 and b.shape[0] != 1):
            return None, "Gemm C is not a per-output-channel bias"
    return np.broadcast_to(b.reshape(-1), (cout,)).astype(np.float32), ""
