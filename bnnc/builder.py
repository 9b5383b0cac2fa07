"""The project's graph builder: BNN graphs in the idioms exporters produce, with onnx.helper.

``GraphBuilder`` accumulates nodes and initializers under unique names, draws every random
weight and BatchNorm statistic from one seeded generator (the same seed gives the same model,
byte for byte), and writes the binarizer idioms of the exporters bnnc reads (torch's ``Sign``,
Larq's ``Sign(Add(Sign(x), 0.1))``, bitorch's ``Where(Equal(Sign(x), 0), 1, Sign(x))``, QONNX's
``Where(x >= 0, 1, -1)``). The tests build their graphs with it and ``bnnc.workloads`` builds the
reference networks of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=None, opset: int = 17, extra_opsets=None) -> onnx.ModelProto:
    """Build a model. ``inputs``/``outputs`` are (name, shape) or (name, shape, elem_type);
    ``inits`` maps names to numpy arrays. An output shape of None is filled in by ONNX shape
    inference."""

    def vi(spec):
        name, shape, *t = spec
        return helper.make_tensor_value_info(name, t[0] if t else F32, shape)

    graph = helper.make_graph(
        nodes, "test", [vi(i) for i in inputs], [vi(o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if any(len(o) > 1 and o[1] is None for o in outputs):
        model = onnx.shape_inference.infer_shapes(model)
    return model


class GraphBuilder:
    """Accumulates nodes and initializers; every name is unique, every random draw seeded."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.i = [], {}, 0

    def name(self, hint: str) -> str:
        self.i += 1
        return f"{hint}_{self.i}"

    def const(self, value, hint: str = "c") -> str:
        n = self.name(hint)
        self.inits[n] = np.asarray(value)
        return n

    def op(self, op: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def bn(self, x: str, c: int, neg_frac: float = 0.3, rank: int = 4, mean=None, gamma=None, beta=None,
           var_scale: float = 1.0) -> str:
        """BatchNormalization with random eval statistics: gamma = +-U(0.5, 1.5) (a fraction
        ``neg_frac`` negative), beta N(0, 0.3), mean N(0, 2), var U(0.5, 4) * ``var_scale``
        (the scale brings a wide dot product back to unit size)."""
        g = self.rng.uniform(0.5, 1.5, c) * np.where(self.rng.random(c) < neg_frac, -1, 1) if gamma is None else gamma
        b = self.rng.normal(0, 0.3, c) if beta is None else beta
        m = self.rng.normal(0, 2, c) if mean is None else mean
        v = self.rng.uniform(0.5, 4, c) * var_scale
        ins = [x] + [self.const(np.asarray(a, np.float32), h) for a, h in ((g, "gamma"), (b, "beta"), (m, "mean"), (v, "var"))]
        return self.op("BatchNormalization", ins, "bn")

    def sign(self, x: str, idiom: str = "sign") -> str:
        if idiom == "sign":
            return self.op("Sign", [x])
        if idiom == "larq":
            s = self.op("Sign", [x])
            return self.op("Sign", [self.op("Add", [s, self.const(np.float32(0.1))])])
        if idiom == "bitorch":
            s = self.op("Sign", [x])
            e = self.op("Equal", [s, self.const(np.float32(0))])
            return self.op("Where", [e, self.const(np.float32(1)), s])
        if idiom == "bipolar":
            t = self.op("GreaterOrEqual", [x, self.const(np.float32(0))])
            return self.op("Where", [t, self.const(np.float32(1)), self.const(np.float32(-1))])
        raise ValueError(idiom)

    def pm1(self, shape, alpha=None) -> np.ndarray:
        """Random +-1 weights, times ``alpha`` per output channel (axis 0) if given."""
        w = self.rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)
        if alpha is not None:
            w = w * np.asarray(alpha, np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
        return w.astype(np.float32)

    def normal(self, shape, fan_in: int) -> np.ndarray:
        """Float weights N(0, 1/fan_in), as a trained float layer roughly has."""
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def conv(self, x: str, w: np.ndarray, bias=None, **attrs) -> str:
        ins = [x, self.const(w, "w")] + ([self.const(np.asarray(bias, np.float32), "b")] if bias is not None else [])
        return self.op("Conv", ins, "conv", **attrs)

    def dense(self, x: str, w: np.ndarray, bias=None) -> str:
        """``Gemm(x, w, transB=1)`` as torch exports ``Linear``: ``w`` is [out, in]."""
        ins = [x, self.const(w, "w")] + ([self.const(np.asarray(bias, np.float32), "b")] if bias is not None else [])
        return self.op("Gemm", ins, "gemm", transB=1)

    def bireal(self, x: str, c: int, blocks: int, idiom: str = "sign") -> str:
        """Bi-Real Net blocks: x + BatchNorm(BinaryConv3x3(sign(x))), ``blocks`` times."""
        for _ in range(blocks):
            y = self.conv(self.sign(x, idiom), self.pm1((c, c, 3, 3)), pads=[1, 1, 1, 1])
            x = self.op("Add", [self.bn(y, c, neg_frac=0.4), x])
        return x

    def model(self, inputs, outputs, opset: int = 17, extra_opsets=None) -> onnx.ModelProto:
        return make_model(self.nodes, inputs, outputs, self.inits, opset=opset, extra_opsets=extra_opsets)
