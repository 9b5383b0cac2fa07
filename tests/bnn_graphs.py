"""Builders of small BNN graphs in the idioms exporters produce (onnx.helper, seeded)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.helpers import make_model

N = helper.make_node


class Builder:
    """Accumulates nodes and initializers; every name is unique."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.i = [], {}, 0

    def name(self, hint: str) -> str:
        self.i += 1
        return f"{hint}_{self.i}"

    def const(self, value, hint="c") -> str:
        n = self.name(hint)
        self.inits[n] = np.asarray(value)
        return n

    def op(self, op: str, inputs, hint=None, **attrs) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(N(op, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def bn(self, x: str, c: int, neg_frac=0.3, rank=4, mean=None, gamma=None, beta=None) -> str:
        g = self.rng.uniform(0.5, 1.5, c) * np.where(self.rng.random(c) < neg_frac, -1, 1) if gamma is None else gamma
        b = self.rng.normal(0, 0.3, c) if beta is None else beta
        m = self.rng.normal(0, 2, c) if mean is None else mean
        v = self.rng.uniform(0.5, 4, c)
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
        w = self.rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)
        if alpha is not None:
            w = w * np.asarray(alpha, np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
        return w.astype(np.float32)

    def conv(self, x: str, w: np.ndarray, bias=None, **attrs) -> str:
        ins = [x, self.const(w, "w")] + ([self.const(np.asarray(bias, np.float32), "b")] if bias is not None else [])
        return self.op("Conv", ins, "conv", **attrs)

    def bireal(self, x: str, c: int, blocks: int, idiom: str = "sign") -> str:
        """Bi-Real Net blocks: x + BatchNorm(BinaryConv3x3(sign(x))), ``blocks`` times."""
        for _ in range(blocks):
            y = self.conv(self.sign(x, idiom), self.pm1((c, c, 3, 3)), pads=[1, 1, 1, 1])
            x = self.op("Add", [self.bn(y, c, neg_frac=0.4), x])
        return x

    def model(self, inputs, outputs, opset=17, extra_opsets=None):
        return make_model(self.nodes, inputs, outputs, self.inits, opset=opset, extra_opsets=extra_opsets)
