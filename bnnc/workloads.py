"""Reference BNN workloads for the benchmarks, built with the project's graph builder.

The architectures users deploy (DESIGN.md), at their published sizes by default and at reduced
sizes for tests; random seeded weights (+-1 for binary layers, N(0, 1/fan_in) for float ones)
and BatchNorm with random eval statistics, so a model is the same byte for byte on every run:

- ``birealnet18``: Bi-Real Net 18 (Liu et al. 2018). Float 7x7/2 stem 3->64 + BN + 3x3/2 max
  pool; four stages of four blocks x + BN(BinaryConv3x3(Sign(x))) (16 binary convs, 64-128-256-512
  channels); the first block of stages 2-4 has stride 2 and an AvgPool2x2 + float 1x1 conv + BN
  shortcut; global average pool, float FC 512->classes. At 224x224: 1.68 G binary MACs.
- ``quicknet``: QuickNet-like (Bannink et al. 2021, larq-zoo): float stem (3x3/2 conv, depthwise
  3x3/2, 1x1 conv, BN), four sections of four residual blocks x + BN(ReLU(BinaryConv3x3(ste_sign
  x))) in Larq's ``Sign(Add(Sign(x), 0.1))`` idiom, float transitions (ReLU, depthwise 3x3/2 +
  BN, 1x1 conv + BN) between sections, ReLU, global average pool, float FC.
- ``cnv``: the VGG-like CIFAR-10 net of FINN/Brevitas: 3x3 convs without padding 64, 64, pool,
  128, 128, pool, 256, 256, then FC 512, 512 and 10, each conv/FC followed by BN and Sign (MaxPool
  on the signs); the first conv and the last FC are float.
- ``mlp``: the BNN MLP 784-1024-1024-1024-10 (Courbariaux et al. 2016): +-1 weights throughout,
  the first layer on the real input (binary-weight), BN + Sign after each hidden layer, BN on
  the logits.

Every builder returns an ``onnx.ModelProto`` with one input, ``input``, and one output, the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from bnnc.builder import GraphBuilder


def _shortcut(b: GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """Bi-Real Net's downsample: AvgPool(stride) -> float 1x1 conv -> BN."""
    if stride > 1:
        x = b.op("AveragePool", [x], kernel_shape=[stride, stride], strides=[stride, stride])
    return b.bn(b.conv(x, b.normal((cout, cin, 1, 1), cin)), cout, neg_frac=0.0)


def birealnet18(size: int = 224, classes: int = 1000, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Bi-Real Net 18 on a ``size`` x ``size`` RGB image; ``width`` channels in the first stage."""
    b = GraphBuilder(seed)
    x = b.conv("input", b.normal((width, 3, 7, 7), 3 * 49), strides=[2, 2], pads=[3, 3, 3, 3])
    x = b.op("MaxPool", [b.bn(x, width, neg_frac=0.0)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage in range(4):
        cout = width << stage
        for block in range(4):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv(b.sign(x), b.pm1((cout, cin, 3, 3)), strides=[stride, stride], pads=[1, 1, 1, 1])
            y = b.bn(y, cout, neg_frac=0.2, var_scale=9 * cin)
            res = _shortcut(b, x, cin, cout, stride) if (stride > 1 or cin != cout) else x
            x, cin = b.op("Add", [y, res]), cout
    return _head(b, x, cin, classes, size)


def _head(b: GraphBuilder, x: str, c: int, classes: int, size: int) -> onnx.ModelProto:
    """Global average pool, flatten, float FC."""
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    logits = b.dense(x, b.normal((classes, c), c), b.rng.normal(0, 0.1, classes))
    return b.model([("input", [1, 3, size, size])], [(logits, [1, classes])])


def quicknet(size: int = 224, classes: int = 1000, width: int = 64, blocks: int = 4, seed: int = 0) -> onnx.ModelProto:
    """QuickNet-like network (see the module docstring); ``width`` channels in the first section."""
    b = GraphBuilder(seed)
    s = max(width // 4, 1)
    x = b.op("Relu", [b.bn(b.conv("input", b.normal((s, 3, 3, 3), 27), strides=[2, 2], pads=[1, 1, 1, 1]), s, neg_frac=0.0)])
    x = b.bn(b.conv(x, b.normal((s, 1, 3, 3), 9), group=s, strides=[2, 2], pads=[1, 1, 1, 1]), s, neg_frac=0.0)
    x = b.bn(b.conv(x, b.normal((width, s, 1, 1), s)), width, neg_frac=0.0)
    c = width
    for section in range(4):
        if section > 0:
            x = b.op("Relu", [x])
            x = b.bn(b.conv(x, b.normal((c, 1, 3, 3), 9), group=c, strides=[2, 2], pads=[1, 1, 1, 1]), c, neg_frac=0.0)
            x = b.bn(b.conv(x, b.normal((2 * c, c, 1, 1), c)), 2 * c, neg_frac=0.0)
            c *= 2
        for _ in range(blocks):
            y = b.conv(b.sign(x, "larq"), b.pm1((c, c, 3, 3)), pads=[1, 1, 1, 1])
            y = b.bn(b.op("Relu", [y]), c, neg_frac=0.0, var_scale=9 * c)
            x = b.op("Add", [y, x])
    return _head(b, b.op("Relu", [x]), c, classes, size)


def cnv(width: int = 64, fc: int = 512, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """CNV on 3x32x32 CIFAR images; conv channels ``width`` x (1, 1, 2, 2, 4, 4), FC ``fc``."""
    b = GraphBuilder(seed)
    chans = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    x, cin = "input", 3
    for i, c in enumerate(chans):
        w = b.normal((c, cin, 3, 3), 9 * cin) if i == 0 else b.pm1((c, cin, 3, 3))
        x = b.sign(b.bn(b.conv(x, w), c, neg_frac=0.2, var_scale=1.0 if i == 0 else 9 * cin))
        if i in (1, 3):
            x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        cin = c
    x = b.op("Flatten", [x])
    for k in (cin, fc):
        x = b.sign(b.bn(b.dense(x, b.pm1((fc, k))), fc, neg_frac=0.2, var_scale=k))
    logits = b.dense(x, b.normal((classes, fc), fc), b.rng.normal(0, 0.1, classes))
    return b.model([("input", [1, 3, 32, 32])], [(logits, [1, classes])])


def mlp(inputs: int = 784, hidden: int = 1024, layers: int = 3, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """BNN MLP ``inputs``-``hidden`` x ``layers``-``classes`` (see the module docstring)."""
    b = GraphBuilder(seed)
    x, k = "input", inputs
    for _ in range(layers):
        x = b.sign(b.bn(b.dense(x, b.pm1((hidden, k))), hidden, neg_frac=0.2, var_scale=k))
        k = hidden
    logits = b.bn(b.dense(x, b.pm1((classes, k))), classes, neg_frac=0.0, var_scale=k)
    return b.model([("input", [1, inputs])], [(logits, [1, classes])])


# name -> builder at the published size; the benchmarks build each of these
WORKLOADS: dict[str, Callable[[], onnx.ModelProto]] = {
    "birealnet18_224": birealnet18,
    "quicknet_224": quicknet,
    "cnv": cnv,
    "mlp_784_1024x3_10": mlp,
}
