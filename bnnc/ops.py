"""Numpy reference implementations of the bnnc custom ops (docs/binary_ops.md), and shape helpers.

The references work on *logical, unpacked* tensors: binary values are integer arrays in
{-1, 0, +1} (0 only where a nonzero mask would be 0), layouts are NCHW / NC, weights are the
logical ``[Cout, Cin/group, kh, kw]`` / ``[Cout, K]`` tensors. They are slow and obvious on
purpose: the runtime kernels (bit-packed, runtime/kernels/binary*.py) are tested against them,
and they are tested against onnxruntime where an ONNX equivalent exists.

``output_shapes`` gives the *physical* output shapes and dtypes of a bnnc node (what the graph's
value_info records), for the passes that create these nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.bitpack import nwords


# -- shapes -------------------------------------------------------------------------------------
def conv_output_hw(h: int, w: int, kernel_shape: Sequence[int], strides: Sequence[int] = (1, 1),
                   pads: Sequence[int] = (0, 0, 0, 0), dilations: Sequence[int] = (1, 1)) -> tuple[int, int]:
    """ONNX Conv output height and width; pads in ONNX order [t, l, b, r]."""
    out = []
    for i, size in enumerate((h, w)):
        span = dilations[i] * (kernel_shape[i] - 1) + 1
        out.append((size + pads[i] + pads[i + 2] - span) // strides[i] + 1)
    return out[0], out[1]


def pool_output_hw(h: int, w: int, kernel_shape: Sequence[int], strides: Sequence[int] = (1, 1),
                   pads: Sequence[int] = (0, 0, 0, 0), dilations: Sequence[int] = (1, 1),
                   ceil_mode: int = 0) -> tuple[int, int]:
    """ONNX MaxPool output height and width. With ``ceil_mode`` a last window that would start
    in the end padding is dropped (as onnxruntime and PyTorch do)."""
    out = []
    for i, size in enumerate((h, w)):
        span = dilations[i] * (kernel_shape[i] - 1) + 1
        num = size + pads[i] + pads[i + 2] - span
        o = (-(-num // strides[i]) if ceil_mode else num // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= size + pads[i]:
            o -= 1
        out.append(o)
    return out[0], out[1]


def packed_shape(logical: Sequence[int]) -> tuple[int, ...]:
    """Physical shape of a packed activation: [N, C, H, W] -> [N, H, W, ceil(C/64)], [N, C] -> [N, ceil(C/64)]."""
    s = [int(d) for d in logical]
    if len(s) == 4:
        return (s[0], s[2], s[3], nwords(s[1]))
    if len(s) == 2:
        return (s[0], nwords(s[1]))
    raise ValueError(f"packed activations are rank 2 or 4, got shape {s}")


def _conv_attrs(attrs: dict) -> tuple[list[int], list[int], list[int], list[int]]:
    k = [int(v) for v in attrs["kernel_shape"]]
    return (k, [int(v) for v in attrs.get("strides", [1, 1])], [int(v) for v in attrs.get("pads", [0, 0, 0, 0])],
            [int(v) for v in attrs.get("dilations", [1, 1])])


def _float_bits_outputs(attrs: dict) -> int:
    """Packed outputs after a "float" output: its binarized twin (attribute bits_zero) and, when
    that maps 0 to 0, the nonzero mask."""
    if "bits_zero" not in attrs:
        return 0
    return 2 if int(attrs["bits_zero"]) == 0 else 1


def output_shapes(op: str, attrs: dict, in_shape: Sequence[int], n_outputs: int = 1) -> list[tuple[tuple[int, ...], str]]:
    """Physical ``(shape, dtype)`` of each output of bnnc node ``op`` ("BinaryConv" or
    "bnnc.BinaryConv") whose first input has physical shape ``in_shape``."""
    op = op.split(".")[-1]
    s = [int(d) for d in in_shape]
    if op == "Binarize":
        shape = packed_shape(s)
        return [(shape, "uint64")] * n_outputs
    if op in ("BinaryConv", "BinaryWeightConv"):
        k, st, p, d = _conv_attrs(attrs)
        h, w = (s[1], s[2]) if op == "BinaryConv" else (s[2], s[3])
        oh, ow = conv_output_hw(h, w, k, st, p, d)
        cout = int(attrs["cout"])
        bits = ((s[0], oh, ow, nwords(cout)), "uint64")
        if op == "BinaryWeightConv" or attrs.get("output", "float") == "float":
            return [((s[0], cout, oh, ow), "float32")] + [bits] * _float_bits_outputs(attrs)
        return [bits] * n_outputs
    if op in ("BinaryDense", "BinaryWeightDense"):
        cout = int(attrs["cout"])
        bits = ((s[0], nwords(cout)), "uint64")
        if op == "BinaryWeightDense" or attrs.get("output", "float") == "float":
            return [((s[0], cout), "float32")] + [bits] * _float_bits_outputs(attrs)
        return [bits] * n_outputs
    if op == "BitMaxPool":
        k, st, p, d = _conv_attrs(attrs)
        if len(s) == 2:
            return [(tuple(s), "uint64")] * n_outputs
        oh, ow = pool_output_hw(s[1], s[2], k, st, p, d, int(attrs.get("ceil_mode", 0)))
        return [((s[0], oh, ow, s[3]), "uint64")] * n_outputs
    raise ValueError(f"unknown bnnc op '{op}'")


# -- elementwise ops and output stages ----------------------------------------------------------
def binarize(x: np.ndarray, zero: int = 1) -> np.ndarray:
    """Binarize: -1 for x < 0, +1 for x > 0, and ``zero`` (1, -1 or 0) for x == 0. int8."""
    if zero not in (1, -1, 0):
        raise ValueError(f"zero must be 1, -1 or 0, got {zero}")
    x = np.asarray(x)
    return np.where(x > 0, 1, np.where(x < 0, -1, zero)).astype(np.int8)


def output_float(s: np.ndarray, scale: np.ndarray, bias: np.ndarray, residual=None) -> np.ndarray:
    """The "float" stage: float32(s) * scale[c] + bias[c], channels on axis 1, in float32; plus
    ``residual`` (same shape as s), added last, when given."""
    s = np.asarray(s)
    shape = (1, -1) + (1,) * (s.ndim - 2)
    sc = np.asarray(scale, np.float32).reshape(shape)
    bi = np.asarray(bias, np.float32).reshape(shape)
    y = (s.astype(np.float32) * sc + bi).astype(np.float32)
    if residual is not None:
        y = (y + np.asarray(residual, np.float32).reshape(y.shape)).astype(np.float32)
    return y


def output_bits(s: np.ndarray, rule: np.ndarray) -> np.ndarray:
    """The "bits" stage: per channel (axis 1) rule row (lo, hi, v_below, v_mid, v_above);
    v_below if s < lo, else v_mid if s <= hi, else v_above. int8 values in {-1, 0, +1}."""
    s = np.asarray(s)
    r = np.asarray(rule).astype(np.int64)
    shape = (1, -1) + (1,) * (s.ndim - 2)
    lo, hi, vb, vm, va = (r[:, i].reshape(shape) for i in range(5))
    return np.where(s < lo, vb, np.where(s <= hi, vm, va)).astype(np.int8)


def _stage(s, output, scale, bias, rule, residual=None):
    if output == "float":
        return output_float(s, scale, bias, residual)
    if output == "bits":
        return output_bits(s, rule)
    raise ValueError(f"output must be 'float' or 'bits', got {output!r}")


# -- convolution and dense ----------------------------------------------------------------------
def _conv_taps(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int, pad_value, dtype):
    """Direct convolution summed tap by tap in ``dtype`` (x [N,C,H,W], w [Cout,C/g,kh,kw])."""
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    if c != cg * group or cout % group:
        raise ValueError(f"channels {c} / weights {w.shape} do not fit group {group}")
    oh, ow = conv_output_hw(h, wd, (kh, kw), strides, pads, dilations)
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                constant_values=pad_value)
    og = cout // group
    out = np.zeros((n, cout, oh, ow), dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            xs = xp[:, :, r0:r0 + strides[0] * (oh - 1) + 1:strides[0], c0:c0 + strides[1] * (ow - 1) + 1:strides[1]]
            for g in range(group):
                wt = w[g * og:(g + 1) * og, :, i, j].astype(dtype)
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", xs[:, g * cg:(g + 1) * cg], wt)
    return out


def binary_conv_int(x: np.ndarray, w: np.ndarray, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                    group: int = 1, pad_value: int = 0) -> np.ndarray:
    """The exact integer s of BinaryConv, int64 [N, Cout, OH, OW]. ``pad_value`` 0: padded taps
    contribute nothing (ONNX zero padding); +-1: padded taps hold that value."""
    if pad_value not in (0, 1, -1):
        raise ValueError(f"pad_value must be 0, 1 or -1, got {pad_value}")
    return _conv_taps(np.asarray(x), np.asarray(w), strides, pads, dilations, group, pad_value, np.int64)


def binary_conv(x, w, scale=None, bias=None, rule=None, *, strides=(1, 1), pads=(0, 0, 0, 0),
                dilations=(1, 1), group: int = 1, pad_value: int = 0, output: str = "float",
                residual=None) -> np.ndarray:
    """BinaryConv: float32 NCHW for output "float" (plus ``residual``), int8 {-1, 0, +1} NCHW for "bits"."""
    s = binary_conv_int(x, w, strides, pads, dilations, group, pad_value)
    return _stage(s, output, scale, bias, rule, residual)


def dense_input(x: np.ndarray, in_order: str = "chw") -> np.ndarray:
    """The [N, K] operand of BinaryDense from a logical [N, C, H, W] (or [N, K]) input:
    "chw" flattens NCHW (PyTorch), "hwc" flattens NHWC (Keras / tf2onnx)."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x
    if in_order == "hwc":
        x = np.transpose(x, (0, 2, 3, 1))
    elif in_order != "chw":
        raise ValueError(f"in_order must be 'chw' or 'hwc', got {in_order!r}")
    return x.reshape(x.shape[0], -1)


def binary_dense_int(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The exact integer s of BinaryDense, int64 [N, Cout], from x [N, K] and w [Cout, K]."""
    return np.asarray(x).astype(np.int64) @ np.asarray(w).astype(np.int64).T


def binary_dense(x, w, scale=None, bias=None, rule=None, *, in_order: str = "chw", output: str = "float",
                 residual=None) -> np.ndarray:
    """BinaryDense on a logical [N, K] or [N, C, H, W] input (flattened by ``in_order``)."""
    s = binary_dense_int(dense_input(x, in_order), w)
    return _stage(s, output, scale, bias, rule, residual)


def float_activation(y: np.ndarray, name: str = "", params: Sequence[float] = ()) -> np.ndarray:
    """The activation a binary-weight layer applies to its float result (the ``activation`` and
    ``activation_params`` attributes, as ONNX defines the op; "" for none), in float64."""
    y = np.asarray(y, np.float64)
    p = [float(v) for v in params]
    if name == "":
        return y
    if name == "Relu":
        return np.maximum(y, 0.0)
    if name == "LeakyRelu":
        return np.where(y < 0, y * (p[0] if p else 0.01), y)
    if name == "Clip":
        lo, hi = p if p else (-np.inf, np.inf)
        return np.minimum(np.maximum(y, lo), hi)
    if name == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if name == "Tanh":
        return np.tanh(y)
    if name == "HardSigmoid":
        alpha, beta = p if p else (0.2, 0.5)
        return np.clip(alpha * y + beta, 0.0, 1.0)
    raise ValueError(f"unknown activation '{name}'")


def binary_weight_conv(x, w, scale, bias, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                       group: int = 1, activation: str = "", activation_params: Sequence[float] = ()) -> np.ndarray:
    """BinaryWeightConv: float conv (zero padding) of x with {-1, 0, +1} weights, times scale
    plus bias per output channel, then the activation; computed in float64, returned as float32."""
    y = _conv_taps(np.asarray(x), np.asarray(w), strides, pads, dilations, group, 0.0, np.float64)
    shape = (1, -1, 1, 1)
    y = y * np.asarray(scale, np.float64).reshape(shape) + np.asarray(bias, np.float64).reshape(shape)
    return float_activation(y, activation, activation_params).astype(np.float32)


def binary_weight_dense(x, w, scale, bias, *, activation: str = "",
                        activation_params: Sequence[float] = ()) -> np.ndarray:
    """BinaryWeightDense: x [N, K] @ w.T times scale plus bias, then the activation; float64
    inside, float32 out."""
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    y = x @ np.asarray(w, np.float64).T
    y = y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
    return float_activation(y, activation, activation_params).astype(np.float32)


# -- pooling ------------------------------------------------------------------------------------
def bit_maxpool(x: np.ndarray, kernel_shape, strides=None, pads=(0, 0, 0, 0), dilations=(1, 1),
                ceil_mode: int = 0, invert: np.ndarray | None = None) -> np.ndarray:
    """BitMaxPool: max of {-1, 0, +1} values over each window of NCHW ``x``, padding ignored
    (as ONNX MaxPool); channels where the bool vector ``invert`` [C] is set take the min. int8."""
    x = np.asarray(x).astype(np.int8)
    strides = strides or (1, 1)
    n, c, h, w = x.shape
    inv = np.zeros(c, bool) if invert is None else np.asarray(invert, bool).reshape(-1)
    x = np.where(inv.reshape(1, c, 1, 1), -x, x)  # min(x) = -max(-x)
    oh, ow = pool_output_hw(h, w, kernel_shape, strides, pads, dilations, ceil_mode)
    ext = [max(0, (o - 1) * strides[i] + dilations[i] * (kernel_shape[i] - 1) + 1 - size - pads[i])
           for i, (o, size) in enumerate(((oh, h), (ow, w)))]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], ext[0]), (pads[1], ext[1])), constant_values=-2)
    out = np.full((n, c, oh, ow), -2, np.int8)
    for i in range(kernel_shape[0]):
        for j in range(kernel_shape[1]):
            r0, c0 = i * dilations[0], j * dilations[1]
            xs = xp[:, :, r0:r0 + strides[0] * (oh - 1) + 1:strides[0], c0:c0 + strides[1] * (ow - 1) + 1:strides[1]]
            out = np.maximum(out, xs)
    if (out < -1).any():
        raise ValueError("a pooling window lies entirely in the padding")
    return np.where(inv.reshape(1, c, 1, 1), -out, out).astype(np.int8)


__all__ = [
    "binarize", "binary_conv", "binary_conv_int", "binary_dense", "binary_dense_int", "binary_weight_conv",
    "binary_weight_dense", "bit_maxpool", "conv_output_hw", "dense_input", "float_activation", "output_bits", "output_float",
    "output_shapes", "packed_shape", "pool_output_hw",
]
