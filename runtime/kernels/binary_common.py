"""Pieces shared by the binary kernels: attribute and constant checks, the output stages,
and the re-layout of dense weight bitstreams (bit convention: runtime/bitpack.py).

Output stages (docs/binary_ops.md): the layer computes the exact integer s per output element;
``"float"`` writes ``float32(s) * scale[c] + bias[c]``; ``"bits"`` looks s up in the channel's
rule row ``(lo, hi, v_below, v_mid, v_above)`` -- tested in that order: ``s < lo`` gives v_below,
else ``s <= hi`` gives v_mid, else v_above -- and writes the value packed (sign bit, and the
nonzero-mask bit when the node has the mask output).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from runtime.bitpack import nwords, pack_bits, unpack_bits
from runtime.kernels.base import Step, check_outputs  # noqa: F401  (the binary kernels import it from here)
from runtime.kernels.binary_tile import COUNT_BYTES

FLOAT, BITS = 0, 1
NO_BITS = 2  # bits_zero when the float output has no binarized twin
F32_1 = np.zeros(1, np.float32)
I32_1x5 = np.zeros((1, 5), np.int32)
I64_8x1 = np.zeros((8, 1), np.int64)

# word XOR-popcounts per unit of the work PARALLEL_WORK counts (an element, a float multiply-add):
# the register tile counts ~16 G words a second per core, a float kernel moves ~1 G elements, so
# a conv of fewer than 1 M word operations (under ~60 us with AVX-512's vpopcntq) runs serially,
# as the hand-off to the second thread costs about what it would save (CNV's 30x30 convs: 2
# threads slower than 1); counting through bytes (AVX2, NEON) a word costs about 4 times more:
# 250 K words (CNV's 10x10x64 conv: 0.16 ms at one thread, the same at two when it stayed serial)
WORDS_PER_WORK = 4 if COUNT_BYTES else 16
# output values per unit of work of a conv's output stage (threshold, scale, bits), measured at
# one thread: ~0.5 ns a value (CNV's 28x28x64 bit output on the panel path: 57 us, 32 us of it
# counting; bitorch ResNet-E's 16-channel 64x64 convs on the narrow path: 0.14 of 0.41 ms for
# 262 K values, the merged rows included). Without it those convs, few words but many outputs,
# looked small and stayed on one thread.
OUTPUTS_PER_WORK = 2


# A batch of several images splits over the threads by whole images, which costs the hand-off
# alone (a split of one image into bands also shortens the tile's rows and repeats the bands'
# set-up): such convs go parallel from an eighth of the work. Measured at 2 threads, one process
# per model, the sessions interleaved (AVX2 host): the corpus CNV (batch 8) 0.726 -> 0.648 ms,
# torch Bi-Real Net (batch 4) 0.759 -> 0.673 ms, the STE CNN (batch 8) 1.03 -> 0.95 ms, bitorch
# ResNet-E (batch 4) 2.71 -> 2.53 ms; the same threshold for one image lost (the CNV workload
# at batch 1: 0.355 -> 0.437 ms; models/xnornet.onnx 0.251 -> 0.295 ms).
BATCH_SPLIT = 8


def conv_work(word_ops: int, outputs: int, images: int = 1) -> int:
    """A binary conv's work in PARALLEL_WORK's units: its word XOR-popcounts and its output
    stage, times BATCH_SPLIT for a batch of several ``images``."""
    return (word_ops // WORDS_PER_WORK + outputs // OUTPUTS_PER_WORK) * (BATCH_SPLIT if images > 1 else 1)


def dummy(ndim: int, dtype) -> np.ndarray:
    """A one-element array standing in for an absent optional operand (keeps one compiled
    specialisation per kernel)."""
    return np.zeros((1,) * ndim, dtype)


def const_input(step: Step, i: int, what: str, dtype: str, optional: bool = False) -> np.ndarray | None:
    """Constant input ``i`` as a contiguous array of ``dtype``; None when absent and optional."""
    if len(step.in_shapes) <= i or step.in_shapes[i] is None:
        if optional:
            return None
        raise step.error(f"input {i} ({what}) is missing")
    c = step.consts[i] if i < len(step.consts) else None
    if c is None:
        raise step.error(f"{what} must be a constant of the artifact")
    if str(c.dtype) != dtype:
        raise step.error(f"{what} must be {dtype}, got {c.dtype}")
    return np.ascontiguousarray(c)


def window_attrs(step: Step) -> tuple[tuple[int, ...], ...]:
    """(kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) of a 2-D window op, lengths checked."""
    out = []
    for key, default, n in (("kernel_shape", [], 2), ("strides", [1, 1], 2), ("pads", [0, 0, 0, 0], 4),
                            ("dilations", [1, 1], 2)):
        v = [int(a) for a in step.attr(key, default)]
        if len(v) != n:
            raise step.error(f"{key} must have {n} values (2-D window), got {v}")
        out.append(tuple(v))
    return tuple(out)


def has_input(step: Step, i: int) -> bool:
    return len(step.in_shapes) > i and step.in_shapes[i] is not None


def packed_image_input(step: Step, channels: int) -> tuple[int, int, int, bool]:
    """N, H, W of the packed activation X [N, H, W, words] of ``channels`` channels (input 0), and
    whether its nonzero mask X_mask (input 1, same shape) is there; both checked."""
    xs = step.in_shapes[0]
    if xs is None or len(xs) != 4:
        raise step.error("X must be a packed activation [N, H, W, words]")
    n, h, w = xs[0], xs[1], xs[2]
    check_input(step, 0, "X", (n, h, w, nwords(channels)), "uint64")
    masked = has_input(step, 1)
    if masked:
        check_input(step, 1, "X_mask", (n, h, w, nwords(channels)), "uint64")
    return n, h, w, masked


def check_input(step: Step, i: int, what: str, shape: tuple, dtype: str) -> None:
    if tuple(step.in_shapes[i] or ()) != tuple(shape) or step.in_dtypes[i] != dtype:
        raise step.error(
            f"{what} must be {dtype} {list(shape)}, got {step.in_dtypes[i]} {list(step.in_shapes[i] or ())}"
        )


def weight_values(step: Step, i: int, shape: tuple[int, ...]) -> np.ndarray:
    """The logical weights (int8 {-1, 0, +1}, ``shape``) from the bitstream at input ``i`` and
    the optional nonzero mask at input ``i + 1``."""
    n = int(np.prod(shape))
    bits = const_input(step, i, "W", "uint64")
    mask = const_input(step, i + 1, "W_mask", "uint64", optional=True)
    for what, a in (("W", bits), ("W_mask", mask)):
        if a is not None and a.size != nwords(n):
            raise step.error(f"{what} holds {a.size} words; {n} weights {list(shape)} need {nwords(n)}")
    neg = unpack_bits(bits.reshape(-1), n).reshape(shape)
    v = np.where(neg, -1, 1).astype(np.int8)
    if mask is not None:
        v[~unpack_bits(mask.reshape(-1), n).reshape(shape)] = 0
    return v


@njit(cache=True)
def _all_set(words, tail):
    for i in range(words.shape[0]):
        for j in range(words.shape[1]):
            if words[i, j] != tail[j]:
                return False
    return True


def all_set(mask: np.ndarray, tail: np.ndarray) -> bool:
    """Whether a packed nonzero mask [..., words] marks every value nonzero (each pixel's words
    equal ``tail``, the valid-bit pattern): then the tensor holds no zero."""
    return _all_set(np.ascontiguousarray(mask).reshape(-1, tail.shape[0]), tail)


def pack_last(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sign and nonzero-mask words of int8 values packed along the last axis."""
    return pack_bits(values < 0, -1), pack_bits(values != 0, -1)


class OutputStage:
    """The parsed output stage of a BinaryConv / BinaryDense node (inputs from index ``i``):
    scale, bias and the optional residual R (float), or the rule (bits)."""

    def __init__(self, step: Step, i: int, cout: int):
        self.kind = step.attr("output", "float")
        self.out_mask = bool(int(step.attr("out_mask", 0)))
        self.residual = has_input(step, i + 2)
        self.res_index = i + 2
        # bits_zero: the float output also written binarized (a fused bnnc.Binarize); NO_BITS: not
        self.bits_zero = int(step.attr("bits_zero", NO_BITS))
        self.also_bits = self.bits_zero != NO_BITS
        self.scale, self.bias, self.rule, self.table = F32_1, F32_1, I32_1x5, I64_8x1
        # read-only stand-ins for absent operands, made here: a session's threads share the stage
        self._dummies = {ndim: (dummy(ndim, np.float32), dummy(ndim, np.uint64)) for ndim in (2, 4)}
        if self.kind == "float":
            self.mode = FLOAT
            self.scale = const_input(step, i, "scale", "float32").reshape(-1)
            self.bias = const_input(step, i + 1, "bias", "float32").reshape(-1)
            if self.scale.size != cout or self.bias.size != cout:
                raise step.error(f"scale and bias must have {cout} values (one per output channel)")
            if self.out_mask:
                raise step.error("out_mask applies to output 'bits' only")
            if self.residual and (step.in_shapes[i + 2] != step.out_shapes[0] or step.in_dtypes[i + 2] != "float32"):
                raise step.error(f"residual R must be float32 of the output's shape {list(step.out_shapes[0])}")
            if self.bits_zero not in (NO_BITS, 1, -1, 0):
                raise step.error(f"bits_zero must be 1, -1 or 0, got {self.bits_zero}")
            self.out_mask = self.bits_zero == 0  # the binarized output's zeros need the mask
        elif self.kind == "bits":
            self.mode = BITS
            self.rule = const_input(step, i, "rule", "int32")
            if self.rule.shape != (cout, 5):
                raise step.error(f"rule must be int32 [{cout}, 5], got {list(self.rule.shape)}")
            v = self.rule[:, 2:]
            if not np.isin(v, (-1, 0, 1)).all():
                raise step.error("rule values v_below, v_mid, v_above must be -1, 0 or +1")
            if not self.out_mask and (v == 0).any():
                raise step.error("rule has zero values but the node has no mask output (out_mask = 0)")
            self.table = rule_table(self.rule)
            if self.residual or self.also_bits:
                raise step.error("a residual input and bits_zero apply to output 'float' only")
        else:
            raise step.error(f"output must be 'float' or 'bits', got {self.kind!r}")

    def out_shapes(self, float_shape: tuple, bits_shape: tuple) -> list[tuple[tuple, str]]:
        bits = [(bits_shape, "uint64")] * (2 if self.out_mask else 1)
        if self.mode == FLOAT:
            return [(float_shape, "float32")] + (bits if self.also_bits else [])
        return bits

    def buffers(self, outs: list[np.ndarray], ndim: int):
        """(y_float, y_bits, y_mask) for the compiled kernel, dummies for the absent ones."""
        df, du = self._dummy_pair(ndim)
        if self.mode == FLOAT and not self.also_bits:
            return outs[0], du, du
        if self.mode == FLOAT:
            return outs[0], outs[1], (outs[2] if self.out_mask else du)
        return df, outs[0], (outs[1] if self.out_mask else du)

    def residual_expr(self, ins: list, ndim: int):
        """The residual R's name in generated code, or a float32 dummy when there is none."""
        return ins[self.res_index] if self.residual else self._dummy_pair(ndim)[0]

    def residual_of(self, ins: list, ndim: int) -> np.ndarray:
        """The residual R for the compiled kernel, a float32 dummy when there is none."""
        if self.residual:
            return np.ascontiguousarray(ins[self.res_index])
        return self._dummy_pair(ndim)[0]

    def _dummy_pair(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 and uint64 stand-ins of rank ndim (2 or 4) for absent operands."""
        return self._dummies[ndim]


def rule_table(rule: np.ndarray) -> np.ndarray:
    """The kernels' form of a rule [C, 5]: int64 [8, C] rows lo, hi, then 0/-1 flags
    neg_below, neg_mid, neg_above, nonzero_below, nonzero_mid, nonzero_above."""
    r = rule.astype(np.int64)
    v = r[:, 2:]
    return np.ascontiguousarray(np.concatenate([r[:, :2].T, -(v.T < 0).astype(np.int64), -(v.T != 0).astype(np.int64)]))


@njit(cache=True, inline="always")
def emit_bits(s, table, c0, yb, ym, out_mask, sg, mk):
    """OR the rule values of ``s[j]`` (output channel c0 + j) into the packed word rows ``yb``
    (sign) and ``ym`` (nonzero mask), word = channel // 64; the caller zeroes the words first.
    ``table`` is ``rule_table(rule)``; sg, mk are int64 scratch as long as s.
    v_below if s < lo, else v_mid if s <= hi, else v_above, branch-free so it vectorises.
    Every loop here indexes contiguous views by its own range: an index LLVM cannot prove
    non-negative (c0 + j) keeps Numba's wraparound in the loop, which then does not vectorise."""
    n = s.shape[0]
    _rule_flags(s, table[0, c0:c0 + n], table[1, c0:c0 + n], table[2, c0:c0 + n], table[3, c0:c0 + n],
                table[4, c0:c0 + n], sg)
    if out_mask:
        _rule_flags(s, table[0, c0:c0 + n], table[1, c0:c0 + n], table[5, c0:c0 + n], table[6, c0:c0 + n],
                    table[7, c0:c0 + n], mk)
    or_flags(sg, mk, n, c0, yb, ym, out_mask)


@njit(cache=True, inline="always")
def rule_flag(s, lo, hi, below, mid, above):
    """The 0 / -1 flag the rule gives s: ``below`` if s < lo, else ``mid`` if s <= hi, else
    ``above``, branch-free so that loops of it vectorise."""
    lt = -np.int64(s < lo)
    le = -np.int64(s <= hi)
    return (lt & below) | (~lt & le & mid) | (~le & above)


@njit(cache=True, inline="always")
def rule_of(table, c, plane):
    """(lo, hi, below, mid, above) of channel c's rule in ``rule_table`` form, for the sign
    (plane 0) or the nonzero mask (plane 1)."""
    return table[0, c], table[1, c], table[2 + 3 * plane, c], table[3 + 3 * plane, c], table[4 + 3 * plane, c]


@njit(cache=True, inline="always")
def or_sign_planes(yr, n, bz, sh, pk):
    """OR the sign (plane 0) and nonzero (plane 1) bits of the floats yr[:n], their value at 0
    being ``bz``, at bit ``sh`` of the word rows pk[0, :n] and pk[1, :n]."""
    for p in range(n):
        neg, nz = sign_flags(yr[p], bz)
        pk[0, p] |= np.uint64(neg & 1) << sh
        pk[1, p] |= np.uint64(nz & 1) << sh


@njit(cache=True, inline="always")
def _rule_flags(s, lo, hi, below, mid, above, out):
    for i in range(s.shape[0]):
        out[i] = rule_flag(s[i], lo[i], hi[i], below[i], mid[i], above[i])


@njit(cache=True, inline="always")
def or_flags(sg, mk, n, c0, yb, ym, out_mask):
    """OR the 0 / -1 flags sg[:n] (and mk[:n]) of channels c0 .. c0 + n - 1 into the word rows
    yb (and ym), word = channel // 64."""
    j = 0
    while j < n:
        b = (c0 + j) & 63
        take = min(64 - b, n - j)
        q = (c0 + j) >> 6
        yb[q] |= _pack_flags(sg[j:], b, take)
        if out_mask:
            ym[q] |= _pack_flags(mk[j:], b, take)
        j += take


@njit(cache=True, inline="always")
def sign_flags(v, zero):
    """(negative, nonzero) of a float as 0 / -1 flags, the value at 0 (and NaN) being ``zero``
    (1, -1 or 0), as bnnc.Binarize: bit 1 = -1; nonzero mask bit 1 = not 0."""
    neg = (not v > 0) if zero == -1 else v < 0
    return -np.int64(neg), -np.int64((v > 0) | (v < 0))


@njit(cache=True)
def emit_sign_bits(y, zero, c0, yb, ym, with_mask, sg, mk):
    """Binarize the float values y[:] (channels c0 ..) into the word rows yb (and the nonzero mask
    ym): the "float" stage's extra bits output (attribute bits_zero). The caller zeroes the words."""
    n = y.shape[0]
    for i in range(n):
        sg[i], mk[i] = sign_flags(y[i], zero)
    or_flags(sg, mk, n, c0, yb, ym, with_mask)


@njit(cache=True, inline="always")
def _pack_flags(f, b, take):
    """Word with bit b + k set where the 0 / -1 flag f[k] is -1, k < take."""
    w = np.int64(0)
    if b == 0 and take == 64:  # the common whole word: constant shifts, vectorises
        for k in range(64):
            w |= f[k] & (np.int64(1) << k)
    else:
        for k in range(take):
            w |= (f[k] & 1) << (b + k)
    return np.uint64(w)


@njit(cache=True)
def emit_row(pc, pm, nv, masked, cg, oc0, n, oh, mode, out_mask, scale, bias, table, y, yb, ym, r, has_r, bz,
             srow, sg, mk):
    """Turn one row of popcounts (channels oc0 .. oc0 + nc) into s and write it through the
    output stage (plus the residual r when has_r, and binarized with bz unless NO_BITS); srow,
    sg, mk are int64 scratch of length nc.
    Pixel by pixel over channel vectors. The views are made once per row and every loop indexes
    them by its own range: an index LLVM cannot prove non-negative (oc0 + j) keeps Numba's
    wraparound in the loop, and a view or a call per pixel costs more than the pixel's work."""
    ow_, nc = pc.shape
    whole = (oc0 & 63) == 0 and (nc & 63) == 0  # whole output words: packed here, in place
    q0 = oc0 >> 6
    sg2 = sg.reshape((nc >> 6, 64)) if whole else sg.reshape((1, nc))
    mk2 = mk.reshape((nc >> 6, 64)) if whole else mk.reshape((1, nc))
    ybr = yb[n, oh] if mode == BITS or bz != NO_BITS else yb[0, 0]
    ymr = ym[n, oh] if out_mask else ym[0, 0]
    if mode == BITS:
        lo, hi = table[0, oc0:oc0 + nc], table[1, oc0:oc0 + nc]
        b0, b1, b2 = table[2, oc0:oc0 + nc], table[3, oc0:oc0 + nc], table[4, oc0:oc0 + nc]
        m0, m1, m2 = table[5, oc0:oc0 + nc], table[6, oc0:oc0 + nc], table[7, oc0:oc0 + nc]
        for ow in range(ow_):
            base = nv[ow] * cg
            for j in range(nc):
                s = (pm[ow, j] if masked else base) - 2 * pc[ow, j]
                lt = -np.int64(s < lo[j])
                le = -np.int64(s <= hi[j])
                sg[j] = (lt & b0[j]) | (~lt & le & b1[j]) | (~le & b2[j])
                if out_mask:
                    mk[j] = (lt & m0[j]) | (~lt & le & m1[j]) | (~le & m2[j])
            _put_flags(sg, mk, sg2, mk2, whole, q0, oc0, ybr[ow], ymr[ow] if out_mask else ymr[0], out_mask)
        return
    sc, bi = scale[oc0:oc0 + nc], bias[oc0:oc0 + nc]
    fv = np.empty(nc, np.float32)
    yv = y[n, oc0:oc0 + nc, oh]
    rv = r[n, oc0:oc0 + nc, oh] if has_r else r[0, :1, 0]
    for ow in range(ow_):
        base = nv[ow] * cg
        for j in range(nc):
            fv[j] = np.float32(np.int32((pm[ow, j] if masked else base) - 2 * pc[ow, j])) * sc[j] + bi[j]
        if has_r:
            for j in range(nc):
                fv[j] += rv[j, ow]
        for j in range(nc):
            yv[j, ow] = fv[j]
        if bz != NO_BITS:
            for j in range(nc):
                sg[j], mk[j] = sign_flags(fv[j], bz)
            _put_flags(sg, mk, sg2, mk2, whole, q0, oc0, ybr[ow], ymr[ow] if out_mask else ymr[0], out_mask)


@njit(cache=True, inline="always")
def _put_flags(sg, mk, sg2, mk2, whole, q0, oc0, ybw, ymw, out_mask):
    """The 0 / -1 flags of one pixel into its words (sg2, mk2: the flags as [words, 64])."""
    if not whole:
        or_flags(sg, mk, sg.shape[0], oc0, ybw, ymw, out_mask)
        return
    for q in range(sg2.shape[0]):
        w = np.int64(0)
        for k in range(64):
            w |= sg2[q, k] & (np.int64(1) << k)
        ybw[q0 + q] = np.uint64(w)
        if out_mask:
            w = np.int64(0)
            for k in range(64):
                w |= mk2[q, k] & (np.int64(1) << k)
            ymw[q0 + q] = np.uint64(w)


@njit(cache=True, inline="always")
def row_task(chunk, nblk, oh_, coutg, cb):
    """(n, oh, c0, c1) of a binary conv task: output row oh of image n, output channels c0 .. c1
    (``nblk`` blocks of ``cb`` per row)."""
    blk = chunk % nblk
    r = chunk // nblk
    c0 = blk * cb
    return r // oh_, r % oh_, c0, min(coutg, c0 + cb)


@njit(cache=True)
def clear_row_words(mode, bz, out_mask, g_, coutg, c0, c1, n, oh, yb, ym) -> None:
    """Zero the packed output words a binary conv task ORs its bits into (channels c0 .. c1 of
    every group's row oh, or all channels when there are groups), before it writes them."""
    if mode != BITS and bz == NO_BITS:
        return
    oc0, oc1 = (c0, c1) if g_ == 1 else (0, g_ * coutg)
    for ow in range(yb.shape[2]):
        for q in range(oc0 >> 6, ((oc1 - 1) >> 6) + 1):
            yb[n, oh, ow, q] = 0
            if out_mask:
                ym[n, oh, ow, q] = 0

