"""bnnc.Sign: the canonical float binarizer, ``scale * sign_z(x)``.

sign_z(x) = +1 for x > 0, -1 for x < 0 and ``zero`` (+1, -1 or 0) for x == 0. It runs in float
only where a binarized value feeds a float op; binary layers read bnnc.Binarize bits instead.
"""

from __future__ import annotations

import numpy as np

from runtime.kernels.base import FLOATS, Kernel, Step, check_dtypes, register
from runtime.kernels.nn import same_shape


@register("bnnc.Sign")
class SignKernel(Kernel):
    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0], FLOATS)
        same_shape(step)
        self.zero = float(step.attr("zero", 0))
        self.scale = np.float32(step.attr("scale", 1.0))

    def emit(self, e, ins, outs):
        t = np.dtype(self.step.out_dtypes[0]).type
        # run's values: sign(x) (NaN stays NaN), then zero at 0, then times scale, in the output type
        pos, neg, zero = (e.lit(t(v) * t(self.scale)) for v in (1, -1, self.zero))
        nan = "{0}" if self.scale == 1 else f"{{0}} * {e.lit(t(self.scale))}"
        expr = f"({pos} if {{0}} > 0 else {neg} if {{0}} < 0 else {zero} if {{0}} == 0 else {nan})"
        e.elementwise(outs[0], self.step.out_shapes[0], [(ins[0], tuple(self.step.in_shapes[0]))], expr.format)

    def run(self, ins, outs, scratch):
        x, out = ins[0], outs[0]
        np.sign(x, out=out)
        if self.zero != 0:
            out[x == 0] = self.zero
        if self.scale != 1:
            out *= self.scale
