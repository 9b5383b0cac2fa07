"""Dense float kernels: Gemm and MatMul (plain and bnnc.Fused*), and the matrix product they and
bnnc.BinaryWeightDense share.

``y[z] = act(alpha * a[ia[z]] @ b[ib[z]] + c[z])`` over the products z of a batch (numpy's
broadcasting of the leading axes is resolved when the kernel is built, into the index tables
ia, ib); one BLAS call per product (runtime/blas.py). A product above ``_SPLIT_MACS``
multiply-adds is cut into bands of rows (or of columns, when it has fewer rows than columns),
one per thread, inside the compiled code: BLAS itself runs single-threaded during an inference.

A float32 product with constant 2-D weights (``Product.use_tiles``) runs on register tiles
instead (runtime/kernels/dense_tiles.py): ``y = [a, 1] @ [b; c]`` in one pass that reads b once,
in order, every row of a product of a few rows in one tile. BLAS handles skinny products poorly
(8 rows x 1024 x 1024: a third of the tiles' speed; one row, Bi-Real Net's 512 -> 1000
classifier: 0.8x onnxruntime, the one-row tile 1.0-1.06x, benchmarks/bench_float_conv.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.blas import gemm
from runtime.codegen import Expr
from runtime.kernels.base import FLOATS, PARALLEL_WORK, Kernel, Step, Twin, broadcast, check_dtypes, register
from runtime.kernels.dense_tiles import DenseTiles, dense_tiles
from runtime.kernels.nn import act_rows, activation_of
from runtime.threads import current_threads

_SPLIT_MACS = 1 << 22  # a product with more multiply-adds than this is split over threads
_SPLIT_BYTES = 1 << 20  # and one whose b has this many bytes (few rows: reading b is the work)
_MIN_BAND = 64  # columns per band at least, when a product is split by columns


def _matmul_body(a, b, c, y, ia, ib, has_c, alpha, tasks, by_rows, kind, a0, a1):
    """y (Z, n, m) = act(alpha * a[ia[z]] @ b[ib[z]] + c[z]) with a (Za, n, k), b (Zb, k, m) and,
    when has_c, c (Z, n, m); task t of ``tasks`` takes band t of the rows (by_rows) or columns of
    every product."""
    Z, n, m = y.shape
    k = a.shape[2]
    total = n if by_rows else m
    per = -(-total // tasks)
    for t in prange(tasks):
        lo, hi = t * per, min(total, (t + 1) * per)
        if hi <= lo:
            continue
        for z in range(Z):
            af, bf, yf = a[ia[z]].reshape(n * k), b[ib[z]].reshape(k * m), y[z].reshape(n * m)
            cf = c[z if has_c else 0].reshape(c.shape[1] * c.shape[2])
            r0, r1, j0, j1 = (lo, hi, 0, m) if by_rows else (0, n, lo, hi)
            if has_c:  # a loop, not a slice assignment: numpy's broadcast machinery compiles slowly
                for r in range(r0, r1):
                    for j in range(r * m + j0, r * m + j1):
                        yf[j] = cf[j]
            gemm(r1 - r0, j1 - j0, k, alpha, af[r0 * k:], k, bf[j0:], m, 1.0 if has_c else 0.0, yf[r0 * m + j0:], m)
            if kind != 0:
                for r in range(r0, r1):
                    seg = yf[r * m + j0:r * m + j1]
                    act_rows(seg, seg, kind, a0, a1)


_matmul = Twin(_matmul_body)


@njit(cache=True, nogil=True)
def _transpose(x, y):
    """y = x.T for 2-D arrays."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            y[j, i] = x[i, j]


class Product:
    """The batched product of a kernel, fixed when it is built: operand shapes (a, b as 3-D
    stacks of matrices), the index tables of the broadcast, and how it is split over threads."""

    def __init__(self, a_shape, b_shape, y_shape, dtype):
        a_shape, b_shape = tuple(a_shape), tuple(b_shape)
        a3 = (1, 1, a_shape[0]) if len(a_shape) == 1 else (int(np.prod(a_shape[:-2])), *a_shape[-2:])
        b3 = (1, b_shape[0], 1) if len(b_shape) == 1 else (int(np.prod(b_shape[:-2])), *b_shape[-2:])
        lead_a = a_shape[:-2] if len(a_shape) > 2 else ()
        lead_b = b_shape[:-2] if len(b_shape) > 2 else ()
        if len(b_shape) == 2 and len(a_shape) > 2:  # one GEMM over all leading rows of a
            a3, lead_a = (1, int(np.prod(a_shape[:-1])), a_shape[-1]), ()
        lead = np.broadcast_shapes(lead_a, lead_b)
        ia = np.broadcast_to(np.arange(a3[0]).reshape(lead_a or (1,)), lead or (1,)).reshape(-1)
        ib = np.broadcast_to(np.arange(b3[0]).reshape(lead_b or (1,)), lead or (1,)).reshape(-1)
        self.a3, self.b3 = a3, b3
        self.y3 = (len(ia), a3[1], b3[2])
        if int(np.prod(self.y3)) != int(np.prod(y_shape)) or a3[2] != b3[1]:
            raise ValueError(f"operands {list(a_shape)} and {list(b_shape)} do not give {list(y_shape)}")
        self.ia, self.ib = ia.astype(np.int64), ib.astype(np.int64)
        self.macs = len(ia) * a3[1] * a3[2] * b3[2]
        self.dtype = np.dtype(dtype)
        self.tiles: DenseTiles | None = None  # when the tiles serve (use_tiles)

    def use_tiles(self, b: np.ndarray | None, c: np.ndarray | None) -> None:
        """Take the register tiles (runtime/kernels/dense_tiles.py) when b is a constant 2-D
        matrix, c absent or one row repeated and the dtype float32."""
        if b is None or b.ndim != 2 or self.y3[0] != 1 or self.dtype != np.float32:
            return
        if c is not None and not np.array_equal(np.broadcast_to(c, self.y3[1:]), np.broadcast_to(c[:1], self.y3[1:])):
            return
        self.tiles = DenseTiles(b, None if c is None else np.broadcast_to(c, self.y3[1:])[0], self.y3[1])

    def _tile_tasks(self, threads: int) -> int:
        """Runs of columns: one per thread when the product is large or b is (``split``)."""
        big = self.macs >= _SPLIT_MACS or self.tiles.b.size * 4 >= _SPLIT_BYTES
        return min(threads if big else 1, -(-self.y3[2] // self.tiles.nr))

    def make_scratch(self) -> dict | None:
        """The packed rows of a, when the tiles serve."""
        return None if self.tiles is None else {"ap": np.zeros(self.tiles.ap_shape, np.float32)}

    def split(self, threads: int) -> tuple[int, bool]:
        """(tasks, by_rows): bands per product, of rows when there are at least as many as columns.
        A product of few rows is bound by reading b, not by its multiply-adds: it is split over
        the threads (by columns) once b is ``_SPLIT_BYTES``, whatever its multiply-adds (Bi-Real
        Net's 512 -> 1000 classifier, 2 MB of weights)."""
        n, m = self.y3[1], self.y3[2]
        b_bytes = self.b3[0] * self.b3[1] * self.b3[2] * self.dtype.itemsize
        tasks = threads if (self.macs >= _SPLIT_MACS or b_bytes >= _SPLIT_BYTES) and threads > 1 else 1
        by_rows = n >= m
        tasks = min(tasks, n if by_rows else -(-m // _MIN_BAND))
        return max(tasks, 1), by_rows

    def work(self, tasks: int) -> int:
        """The ``work`` a call reports: enough for the parallel twin when it is split."""
        return max(self.macs, PARALLEL_WORK) if tasks > 1 else 0

    def emit(self, e, a, b, c, y, alpha: float, act) -> None:
        """y = act(alpha * a @ b + c) in generated code; a, b, c, y are source names or arrays (c
        None: no addend; else of y's shape, broadcast already)."""
        if self.tiles is not None:
            t, tasks = self.tiles, self._tile_tasks(e.threads)
            a2 = np.ascontiguousarray(a).reshape(self.y3[1], self.a3[2]) if isinstance(a, np.ndarray) else Expr(
                f"{a}.reshape({e.lit((self.y3[1], self.a3[2]))})")
            y2 = Expr(f"{y}.reshape({e.lit(self.y3[1:])})")
            e.call(dense_tiles, a2, e.work(t.ap_shape, np.float32, "ap"), t.b, t.offs, y2, t.zero, t.blocks, t.nr,
                   tasks, *act, work=self.work(tasks))
            return
        tasks, by_rows = self.split(e.threads)
        def r(v, shape):
            return np.ascontiguousarray(v).reshape(shape) if isinstance(v, np.ndarray) else Expr(
                f"{v}.reshape({e.lit(shape)})")

        e.call(_matmul, r(a, self.a3), r(b, self.b3), r(y if c is None else c, self.y3), r(y, self.y3), self.ia,
               self.ib, c is not None, float(alpha), tasks, by_rows, *act, work=self.work(tasks))

    def run(self, a, b, c, y, alpha: float, act, scratch: dict) -> None:
        if self.tiles is not None:
            t, tasks = self.tiles, self._tile_tasks(current_threads())
            dense_tiles(self.work(tasks), np.ascontiguousarray(a, np.float32).reshape(self.y3[1], self.a3[2]),
                        scratch["ap"], t.b, t.offs, y.reshape(self.y3[1:]), t.zero, t.blocks, t.nr, tasks, *act)
            return
        tasks, by_rows = self.split(current_threads())
        y3 = y.reshape(self.y3)
        c3 = y3 if c is None else np.ascontiguousarray(c, self.dtype).reshape(self.y3)
        _matmul(self.work(tasks), np.ascontiguousarray(a, self.dtype).reshape(self.a3),
                np.ascontiguousarray(b, self.dtype).reshape(self.b3), c3, y3, self.ia, self.ib, c is not None,
                float(alpha), tasks, by_rows, *act)


@register("Gemm", "bnnc.FusedGemm")
class Gemm(Kernel):
    """Y = act(alpha * A' @ B' + beta * C); a constant B is transposed and scaled once, a
    constant C scaled and broadcast once."""

    n_inputs = (2, 3)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0, 1, 2], FLOATS)
        self.act = activation_of(step) if step.op == "bnnc.FusedGemm" else (0, 0.0, 0.0)
        self.alpha = float(step.attr("alpha", 1.0))
        self.beta = float(step.attr("beta", 1.0))
        self.trans_a = bool(step.attr("transA", 0))
        self.trans_b = bool(step.attr("transB", 0))
        self.dtype = np.dtype(step.out_dtypes[0])
        self.b = self._b(step.consts[1], True) if step.consts[1] is not None else None
        self.has_c = len(step.in_shapes) > 2 and step.in_shapes[2] is not None and self.beta != 0.0
        self.c = self._c(step.consts[2]) if self.has_c and step.consts[2] is not None else None
        sa, sb = step.in_shapes[0], step.in_shapes[1]
        if sa is None or sb is None or len(sa) != 2 or len(sb) != 2:
            raise step.error(f"A and B must be 2-D, got shapes {sa} and {sb}")
        self.a_shape, self.b_shape = (sa[::-1] if self.trans_a else sa), (sb[::-1] if self.trans_b else sb)
        if tuple(step.out_shapes[0]) != (self.a_shape[0], self.b_shape[1]):
            raise step.error(f"A' {list(self.a_shape)} times B' {list(self.b_shape)} does not give {list(step.out_shapes[0])}")
        if self.has_c and broadcast(step, [step.in_shapes[2], step.out_shapes[0]]) != tuple(step.out_shapes[0]):
            raise step.error(f"C of shape {list(step.in_shapes[2])} does not broadcast to {list(step.out_shapes[0])}")
        try:
            self.product = Product(self.a_shape, self.b_shape, step.out_shapes[0], self.dtype)
        except ValueError as err:
            raise step.error(str(err)) from None
        if not self.has_c or self.c is not None:
            self.product.use_tiles(self.b, self.c)

    def _b(self, b: np.ndarray, fold_alpha: bool) -> np.ndarray:
        b = b.T if self.trans_b else b
        if fold_alpha and self.alpha != 1.0:
            b = b * self.dtype.type(self.alpha)
        return np.ascontiguousarray(b, dtype=self.dtype)

    def _c(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=self.dtype) * self.dtype.type(self.beta)
        try:
            return np.ascontiguousarray(np.broadcast_to(c, self.step.out_shapes[0]))
        except ValueError:
            raise self.step.error(f"C of shape {c.shape} does not broadcast to {self.step.out_shapes[0]}") from None

    def emit(self, e, ins, outs):
        a, b = ins[0], self.b
        if self.trans_a:
            a = e.work(self.a_shape, self.dtype, "at")
            e.call(_transpose, ins[0], a)
        if b is None and self.trans_b:
            b = e.work(self.b_shape, self.dtype, "bt")
            e.call(_transpose, ins[1], b)
        c = self.c
        if self.has_c and c is None:  # beta * C broadcast, made in the workspace
            c = e.work(self.step.out_shapes[0], self.dtype, "c")
            beta = self.dtype.type(self.beta)
            e.elementwise(c, self.step.out_shapes[0], [(ins[2], self.step.in_shapes[2])], lambda v: f"{v} * {e.lit(beta)}")
        self.product.emit(e, a, ins[1] if b is None else b, c, outs[0], 1.0 if self.b is not None else self.alpha, self.act)

    def make_scratch(self):
        return self.product.make_scratch()

    def run(self, ins, outs, scratch):
        a = ins[0].T if self.trans_a else ins[0]
        b, alpha = (self.b, 1.0) if self.b is not None else (self._b(ins[1], False), self.alpha)
        c = self.c if self.c is not None or not self.has_c else self._c(ins[2])
        self.product.run(a, b, c, outs[0], alpha, self.act, scratch)


def _matmul_shape(step: Step, sa: tuple, sb: tuple) -> tuple:
    """numpy's matmul result shape (1-D operands promoted, then their axis dropped)."""
    a = (1,) + sa if len(sa) == 1 else sa
    b = sb + (1,) if len(sb) == 1 else sb
    if a[-1] != b[-2]:
        raise step.error(f"operands {list(sa)} and {list(sb)} do not multiply")
    core = a[-2:-1] * (len(sa) > 1) + b[-1:] * (len(sb) > 1)
    return broadcast(step, [a[:-2], b[:-2]]) + core


@register("MatMul", "bnnc.FusedMatMul")
class MatMul(Kernel):
    """numpy-semantics matmul (batched, broadcast, 1-D operands); a constant 2-D B with a
    batched A is one GEMM over all leading rows."""

    n_inputs = (2, 2)

    def __init__(self, step: Step):
        super().__init__(step)
        check_dtypes(step, [0, 1], FLOATS)
        self.act = activation_of(step) if step.op == "bnnc.FusedMatMul" else (0, 0.0, 0.0)
        b = step.consts[1]
        self.b = np.ascontiguousarray(b) if b is not None else None
        sa, sb = step.in_shapes[0], step.in_shapes[1]
        if sa is None or sb is None or not sa or not sb:
            raise step.error(f"MatMul needs operands of rank >= 1, got shapes {sa} and {sb}")
        if tuple(step.out_shapes[0]) != _matmul_shape(step, tuple(sa), tuple(sb)):
            raise step.error(f"operands {list(sa)} and {list(sb)} do not give {list(step.out_shapes[0])}")
        try:
            self.product = Product(sa, sb, step.out_shapes[0], step.out_dtypes[0])
        except ValueError as err:
            raise step.error(str(err)) from None
        self.product.use_tiles(self.b, None)

    def emit(self, e, ins, outs):
        self.product.emit(e, ins[0], self.b if self.b is not None else ins[1], None, outs[0], 1.0, self.act)

    def make_scratch(self):
        return self.product.make_scratch()

    def run(self, ins, outs, scratch):
        self.product.run(ins[0], self.b if self.b is not None else ins[1], None, outs[0], 1.0, self.act, scratch)
