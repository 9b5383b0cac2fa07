"""bnnc.BinaryWeightConv, bnnc.BinaryWeightDense: float input, binary (or ternary) weights.

``y = act(conv(x, W) * scale[c] + bias[c])`` (zero padding, as ONNX Conv) and ``y = act(x @ W.T *
scale + bias)`` with W in {-1, 0, +1}, act the fused activation (``activation`` and
``activation_params``, runtime/kernels/nn.py; none by default). With a real input there are no
bits to XOR. A convolution of one group whose weights are all +-1 adds signed sums from tables
instead of multiplying (runtime/kernels/binary_weight_table.py), where its estimated cost
(``_ops``, fitted to benchmarks/bench_binary_weight.py) is below the float convolution's;
everything else (ternary weights: a zero has no sign; groups; layers too small for the tables to
pay) unpacks the weight bitstream (runtime/bitpack.py) once into float32 ``W * scale[c]`` -- the
exporter's own weights, alpha times the signs -- and the float convolution
(runtime/kernels/conv.py) or matrix product (runtime/kernels/dense.py) does the rest, in the
session's plan function or step by step. The artifact keeps the packed bits.
"""

from __future__ import annotations

import numpy as np

from runtime.codegen import Expr
from runtime.kernels import conv_tile as tiles
from runtime.kernels.base import Kernel, Step, check_dtypes, check_scratch, register
from runtime.kernels.binary_common import check_input, check_outputs, const_input, weight_values, window_attrs
from runtime.kernels.binary_weight_table import LANES, MR, G, H, P, V, conv_table, pad_taps, table_offsets
from runtime.kernels.conv import Conv
from runtime.kernels.conv_gemm import workers
from runtime.kernels.dense import Product
from runtime.kernels.nn import activation_of
from runtime.threads import current_threads

# the cost of a vector add from a table, of a table entry, of 8 floats packed, of an output vector
# stored, in float vector multiply-adds (``_ops``)
ACC_COST, BUILD_COST, PACK_COST, STORE_COST = 1.45, 1.55, 2.65, 30.0
SPLIT_WORK = 1 << 22  # below this much float-equivalent work a conv runs in one thread (conv.py)


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


class TablePlan:
    """One binary-weight convolution (one group, weights all +-1) by sign tables: its geometry,
    constants and the choice of wide rows or packed blocks."""

    def __init__(self, conv, signs: np.ndarray, scale: np.ndarray, bias: np.ndarray, packed: bool):
        self.x4, self.y4, self.macs, self.packed = conv.x4, conv.y4, conv.macs, packed
        m, c, kh, kw = conv.w4
        offs, self.geo, plane = tiles.geometry(c, self.y4[2:], (kh, kw), conv.strides, conv.dil, conv.pads)
        wide = self.geo[2] * self.geo[3]
        self.xq_shape = (self.x4[0], plane + wide + 2 * P)  # the zero run: padding taps, block overrun
        self.offs = pad_taps(offs, plane)
        self.idx = table_offsets(signs.reshape(m, -1))
        self.scale, self.bias = np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(bias, np.float32)
        self.work = int(_ops(self.y4, m, c * kh * kw, self.geo[3], packed) * LANES)  # in multiply-adds

    @staticmethod
    def choose(conv, values: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> TablePlan | None:
        """The table plan of least estimated cost (``_ops``), when it is less than the float
        convolution's (a vector multiply-add per LANES multiply-adds), else None: other groups,
        ternary weights and other dtypes stay float."""
        if conv.groups != 1 or conv.dtype != np.float32 or not np.all(values):
            return None
        m, c, kh, kw = conv.w4
        wq = tiles.geometry(1, conv.y4[2:], (kh, kw), conv.strides, conv.dil, conv.pads)[1][3]
        costs = {packed: _ops(conv.y4, m, c * kh * kw, wq, packed) for packed in (False, True)}
        packed = min(costs, key=costs.get)
        if costs[packed] >= conv.macs / LANES:
            return None
        return TablePlan(conv, values, scale, bias, packed)

    def _tasks(self, threads: int) -> int:
        t = workers(self.work, threads, SPLIT_WORK)
        n, _, oh, ow = self.y4
        if self.packed:
            return max(1, min(t, -(-n * oh * ow // P)))
        return tiles.chunks_of(n, oh, t)

    def emit(self, e, x: str, y: str, act) -> None:
        tasks = self._tasks(e.threads)
        xq = e.work(self.xq_shape, np.float32, "xq", zeroed=True)
        x, y = Expr(f"{x}.reshape({e.lit(self.x4)})"), Expr(f"{y}.reshape({e.lit(self.y4)})")
        work = self.work if workers(self.work, e.threads, SPLIT_WORK) > 1 else 0
        e.call(conv_table, x, xq, self.offs, self.idx, self.scale, self.bias, y, self.geo, *act, tasks, self.packed,
               work=work)

    def make_scratch(self) -> dict:
        return {"xq": np.zeros(self.xq_shape, np.float32)}

    def run(self, x: np.ndarray, y: np.ndarray, act, scratch: dict) -> None:
        threads = current_threads()
        work = self.work if workers(self.work, threads, SPLIT_WORK) > 1 else 0
        conv_table(work, x.reshape(self.x4), scratch["xq"], self.offs, self.idx, self.scale, self.bias,
                   y.reshape(self.y4), self.geo, *act, self._tasks(threads), self.packed)


def _ops(y4, m: int, k: int, wq: int, packed: bool) -> float:
    """Estimated cost of the table path in float vector multiply-adds (the float convolution's
    unit, LANES multiply-adds each): per block of P positions and group, MR * V loads and adds
    per tile of output channels and H * V table stores; per block, its K taps' P values packed
    (packed blocks; wide blocks cover the wide columns instead) and M * V output vectors stored.
    The weights are fitted to benchmarks/bench_binary_weight.py (AVX-512, Zen 4)."""
    n, _, oh, ow = y4
    nq, mp = -(-k // G), -(-m // MR) * MR
    if packed:
        blocks, pack = -(-n * oh * ow // P), k * P / 8
    else:
        blocks, pack = n * -(-((oh - 1) * wq + ow) // P), 0.0
    return blocks * (nq * V * (ACC_COST * mp + BUILD_COST * H) + PACK_COST * pack + STORE_COST * m * V)
