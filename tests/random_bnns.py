"""Random BNN graphs in every idiom the compiler recognises, for differential tests.

A graph is an input, one to three binary convolutions, and a tail. Each convolution reads a
binarizer (ONNX Sign, Larq's Sign(Add(Sign(x), 0.1)), bitorch's Where(Equal(Sign(x), 0), 1, Sign(x))
or BipolarQuant's Where(x >= 0, 1, -1)) and has +-1, +-alpha or ternary weights, any channel count,
kernel 1 to 5, stride, dilation, asymmetric zero padding and groups; between two of them sits a
chain: nothing (the next binarizer meets the integer result, exact zeros included), a BatchNorm with
negative scales, one that is exactly 0 at some integer results (ties), a BatchNorm and a Clip, a
BatchNorm and a PRelu with a negative slope, a per-channel Mul and Add, a
residual Add of the layer's input, or a MaxPool. The tail is the last convolution's output, or a
flatten and a binary dense layer.

Everything onnxruntime computes before a binarizer is exact in float: inputs are multiples of 1/2
(with exact zeros), weight scales and biases are powers of two, so a disagreement between bnnc and
onnxruntime on any bit is a bnnc bug, never a float near-tie.
"""

from __future__ import annotations

import numpy as np

from tests.bnn_graphs import Builder
from tests.fuzz.source import Source

IDIOMS = ("sign", "larq", "bitorch", "bipolar")
CHAINS = ("none", "bn", "bn_tie", "bn_clip", "bn_prelu", "affine", "residual", "maxpool")


def _pow2(src: Source, n: int) -> np.ndarray:
    return np.array([2.0 ** src.integer(-3, 2) for _ in range(n)], np.float32)


def _weights(src: Source, b: Builder, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    kind = src.choice(("pm1", "alpha", "ternary"))
    w = b.pm1(shape, _pow2(src, shape[0]) if kind != "pm1" else None)
    if kind == "ternary":
        w[b.rng.random(shape) < 0.3] = 0.0
    return w, kind


def _out_size(n: int, k: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
    return (n + pads[0] + pads[1] - dilation * (k - 1) - 1) // stride + 1


def _conv(src: Source, b: Builder, x: str, shape: list[int], desc: list[str]) -> tuple[str, list[int]]:
    """One binary convolution of ``x`` (shape NCHW) after a binarizer; returns (output, shape)."""
    n, cin, h, w = shape
    idiom = src.choice(IDIOMS)
    group = src.choice([g for g in (1, 2, 3) if cin % g == 0])
    cout = group * src.integer(1, 5) if group > 1 else src.choice([1, 2, 3, 5, 7, 8, 9, 16, 65])
    for _ in range(20):  # a geometry whose output is at least 1x1
        k, stride, dil = src.integer(1, 5), src.integer(1, 2), src.integer(1, 2)
        pads = [src.integer(0, 2) for _ in range(4)]  # top, left, bottom, right
        oh = _out_size(h, k, stride, dil, (pads[0], pads[2]))
        ow = _out_size(w, k, stride, dil, (pads[1], pads[3]))
        if oh >= 1 and ow >= 1:
            break
    else:
        k, stride, dil, pads, oh, ow = 1, 1, 1, [0, 0, 0, 0], h, w
    wts, kind = _weights(src, b, (cout, cin // group, k, k))
    bias = _pow2(src, cout) * np.where(b.rng.random(cout) < 0.5, -1, 1) if src.coin(1, 3) else None
    y = b.conv(b.sign(x, idiom), wts, bias=bias, pads=pads, strides=[stride, stride],
               dilations=[dil, dil], kernel_shape=[k, k], group=group)
    desc.append(f"{idiom} conv {cin}->{cout} k{k} s{stride} d{dil} p{pads} g{group} {kind}{' +bias' if bias is not None else ''}")
    return y, [n, cout, oh, ow]


def _chain(src: Source, b: Builder, y: str, x: str, shape: list[int], x_shape: list[int],
           desc: list[str]) -> tuple[str, list[int]]:
    """The per-channel chain between a binary convolution and the next binarizer."""
    c = shape[1]
    kind = src.choice(CHAINS)
    if kind == "residual" and shape != x_shape:
        kind = "bn"
    if kind == "maxpool" and min(shape[2:]) < 2:
        kind = "none"
    desc.append(kind)
    if kind == "bn":
        return b.bn(y, c, neg_frac=0.4), shape
    if kind == "bn_tie":  # exact in float: integer means, power-of-two scales, var 1, epsilon 0
        gamma = _pow2(src, c) * np.where(b.rng.random(c) < 0.4, -1, 1)
        params = [gamma, np.zeros(c), b.rng.integers(-3, 4, c), np.ones(c)]
        ins = [y] + [b.const(np.asarray(p, np.float32), "bn") for p in params]
        return b.op("BatchNormalization", ins, "bn", epsilon=0.0), shape
    if kind == "bn_clip":
        return b.op("Clip", [b.bn(y, c), b.const(np.float32(-1)), b.const(np.float32(1))]), shape
    if kind == "bn_prelu":
        slope = -(2.0 ** src.integer(-2, 1))
        return b.op("PRelu", [b.bn(y, c), b.const(np.full((c, 1, 1), slope, np.float32))]), shape
    if kind == "affine":
        scale = _pow2(src, c) * np.where(b.rng.random(c) < 0.4, -1, 1)
        y = b.op("Mul", [y, b.const(scale.reshape(c, 1, 1).astype(np.float32))])
        return b.op("Add", [y, b.const(b.rng.integers(-3, 4, (c, 1, 1)).astype(np.float32) * 0.5)]), shape
    if kind == "residual":
        return b.op("Add", [b.bn(y, c), x]), shape
    if kind == "maxpool":
        y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        return y, shape[:2] + [shape[2] // 2, shape[3] // 2]
    return y, shape


def random_bnn(src: Source):
    """(model, input, exact, description) of one random BNN (module docstring). ``exact``: the
    output is a binary layer's own result (integer dot products times powers of two), which must
    equal onnxruntime's exactly; otherwise a float chain follows it, which bnnc may fold into the
    layer's scale and bias (a rounding of about 1e-7 relative)."""
    b = Builder(src.integer(0, 2**31))
    shape = [src.integer(1, 2), src.choice([1, 2, 3, 4, 5, 7, 9]), src.integer(3, 9), src.integer(3, 9)]
    x_shape, desc = list(shape), [f"x{shape}"]
    t, layers = "x", src.integer(1, 3)
    for i in range(layers):
        y, y_shape = _conv(src, b, t, shape, desc)
        exact = not (src.coin(2, 3) if i + 1 < layers else src.coin(1, 3))
        t, shape = (y, y_shape) if exact else _chain(src, b, y, t, y_shape, shape, desc)
    if src.coin(1, 3):
        flat = b.op("Flatten", [b.sign(t, src.choice(IDIOMS))], axis=1)
        k = int(np.prod(shape[1:]))
        cout = src.choice([1, 3, 10, 64, 65])
        t = b.op("Gemm", [flat, b.const(b.pm1((cout, k), _pow2(src, cout))), b.const(np.zeros(cout, np.float32))], transB=1)
        desc.append(f"flatten dense {k}->{cout}")
        shape, exact = [shape[0], cout], True
    x = b.rng.integers(-4, 5, x_shape).astype(np.float32) * 0.5
    x[b.rng.random(x_shape) < src.choice([0.0, 0.1, 0.5])] = 0.0
    return b.model([("x", x_shape)], [(t, None)]), x, exact, "; ".join(desc)
