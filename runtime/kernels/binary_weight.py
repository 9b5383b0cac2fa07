"""bnnc.BinaryWeightConv, bnnc.BinaryWeightDense: float input, binary (or ternary) weights.

``y = act(conv(x, W) * scale[c] + bias[c])`` (zero padding, as ONNX Conv) and ``y = act(x @ W.T *
scale + bias)`` with W in {-1, 0, +1}, act the fused activation (``activation`` and
``activation_params``, runtime/kernels/nn.py; none by default). With a real input there are no bits to XOR: the fastest way to
compute this on a CPU is a float GEMM, so ``__init__`` unpacks the weight bitstream
(runtime/bitpack.py) once into float32 ``W * scale[c]`` -- the exporter's own weights, alpha times
the signs -- and the float convolution (runtime/kernels/conv.py) or matrix product
(runtime/kernels/dense.py) does the rest, in the session's plan function or step by step.
The artifact keeps the packed bits; only the loaded session holds float weights.
"""

from __future__ import annotations

import numpy as np

from runtime.kernels.base import Kernel, Step, check_dtypes, check_scratch, register
from runtime.kernels.binary_common import check_input, check_outputs, const_input, weight_values, window_attrs
from runtime.kernels.binary_weight_table import TablePlan
from runtime.kernels.conv import Conv
from runtime.kernels.dense import Product
from runtime.kernels.nn import activation_of


def _scale_bias_of(step: Step, cout: int) -> tuple[np.ndarray, np.ndarray]:
    scale = const_input(step, 3, "scale", "float32").reshape(-1)
    bias = const_input(step, 4, "bias", "float32").reshape(-1)
    if scale.size != cout or bias.size != cout:
        raise step.error(f"scale and bias must have {cout} values (one per output channel)")
    return scale, bias


@register("bnnc.BinaryWeightConv")
class BinaryWeightConv(Conv):
    """Sign tables (runtime/kernels/binary_weight_table.py) where their estimated work is less
    than the float convolution's, else the float convolution (runtime/kernels/conv.py) with
    weights ``values * scale[c]``, unpacked once, and ``bias`` as its bias."""

    n_inputs = (5, 5)  # X, W, W_mask, scale, bias

    def __init__(self, step: Step):
        Kernel.__init__(self, step)
        (kh, kw), _, (pt, pl, pb, pr), _ = window_attrs(step)
        g, cin, cout = int(step.attr("group", 1)), int(step.attr("cin", 0)), int(step.attr("cout", 0))
        if min(kh, kw, g, cin, cout) < 1 or cin % g or cout % g:
            raise step.error("bad convolution attributes (sizes must be positive, channels multiples of group)")
        xs = step.in_shapes[0]
        if xs is None or len(xs) != 4:
            raise step.error("X must be float32 [N, C, H, W]")
        check_input(step, 0, "X", (xs[0], cin, xs[2], xs[3]), "float32")
        check_dtypes(step, [0], ("float32",))  # the output too
        self._plan((cout, cin // g, kh, kw), g, activation_of(step))
        scale, bias = _scale_bias_of(step, cout)
        values = weight_values(step, 1, self.w4)
        self.const = self.has_bias = True
        self.table = TablePlan.choose(self, values, scale, bias)
        if self.table is not None:
            check_scratch(step, self.table.xq_shape, np.float32)
            return
        self.params = self._params(values.astype(np.float32) * scale.reshape(-1, 1, 1, 1), bias)

    def emit(self, e, ins, outs):
        if self.table is None:
            return super().emit(e, ins, outs)
        self.table.emit(e, ins[0], outs[0], self.act)

    def make_scratch(self):
        return super().make_scratch() if self.table is None else self.table.make_scratch()

    def run(self, ins, outs, scratch):
        if self.table is None:
            return super().run(ins, outs, scratch)
        self.table.run(ins[0], outs[0], self.act, scratch)


@register("bnnc.BinaryWeightDense")
class BinaryWeightDense(Kernel):
    n_inputs = (5, 5)  # X, W, W_mask, scale, bias

    def __init__(self, step: Step):
        super().__init__(step)
        cout, k = int(step.attr("cout", 0)), int(step.attr("k", 0))
        xs = step.in_shapes[0]
        if cout < 1 or k < 1 or xs is None or len(xs) < 2 or int(np.prod(xs[1:])) != k:
            raise step.error(f"X must be float32 [N, {k}] (cout >= 1), got {xs}")
        check_input(step, 0, "X", tuple(xs), "float32")
        check_outputs(step, [((xs[0], cout), "float32")])
        scale, bias = _scale_bias_of(step, cout)
        self.wt = np.ascontiguousarray((weight_values(step, 1, (cout, k)).astype(np.float32) * scale[:, None]).T)
        self.c = np.ascontiguousarray(np.broadcast_to(bias, (xs[0], cout)))  # the bias of every row
        self.product = Product((xs[0], k), (k, cout), (xs[0], cout), np.float32)
        self.product.use_tiles(self.wt, self.c)
        self.act = activation_of(step)

    def emit(self, e, ins, outs):
        self.product.emit(e, ins[0], self.wt, self.c, outs[0], 1.0, self.act)

    def make_scratch(self):
        return self.product.make_scratch()

    def run(self, ins, outs, scratch):
        self.product.run(ins[0], self.wt, self.c, outs[0], 1.0, self.act, scratch)
