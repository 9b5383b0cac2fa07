"""bnnc's bit convention, stated once, and the helpers that pack and unpack by it.

The convention (docs/binary_ops.md refers here):

- A binary value is stored as one bit: **bit 1 means -1, bit 0 means +1**.
- Element ``i`` of a packed axis goes to **word i // 64, bit i % 64** of a ``uint64`` array
  (bit b is ``1 << b``). The unused tail bits of the last word are 0, in activations and in
  weights alike, so they never count.
- For two packed vectors a, w of K valid elements, ``a[i] * w[i]`` is -1 exactly where the bits
  differ, hence ``dot(a, w) = K - 2 * popcount(a xor w)``.
- A tensor that may hold exact zeros carries a second tensor of the same layout, the **nonzero
  mask**: mask bit 1 means the value is nonzero; a zero is stored as sign bit 0, mask bit 0.
  With ``m = mask_a & mask_w`` the dot product is ``popcount(m) - 2 * popcount((a xor w) & m)``:
  zeros drop out of both the count of valid terms and the count of -1 products.

Layouts: a logical NCHW activation is packed along C into ``[N, H, W, ceil(C/64)]`` (channels
last, so one pixel's channels are contiguous words); ``[N, C]`` becomes ``[N, ceil(C/64)]``.
Weights travel in the artifact as the dense bitstream of the logical tensor flattened in C order
(``pack_dense``); kernels re-lay them out once per session.

The numpy helpers here are for building artifacts, for tests and for kernel ``__init__`` code;
``popcount`` is the ``llvm.ctpop`` intrinsic for ``@njit`` code.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

WORD = 64


def nwords(n: int) -> int:
    """Number of uint64 words that hold ``n`` bits."""
    return (int(n) + WORD - 1) // WORD


def tail_mask(n: int) -> np.ndarray:
    """The valid-bit pattern of the words holding ``n`` bits: all ones but the unused tail."""
    words = np.full(nwords(n), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    if n % WORD:
        words[-1] = np.uint64((1 << (n % WORD)) - 1)
    return words


def pack_bits(bits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack a 0/1 (or bool) array along ``axis`` into uint64 words (element i -> word i // 64,
    bit i % 64); the axis of length n becomes an axis of length ceil(n / 64)."""
    b = np.moveaxis(np.asarray(bits) != 0, axis, -1)
    n = b.shape[-1]
    pad = nwords(n) * WORD - n
    if pad:
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,), dtype=bool)], axis=-1)
    by = np.packbits(b, axis=-1, bitorder="little")
    words = np.ascontiguousarray(by).view("<u8").astype(np.uint64)
    return np.ascontiguousarray(np.moveaxis(words, -1, axis))


def unpack_bits(words: np.ndarray, n: int, axis: int = -1) -> np.ndarray:
    """Inverse of ``pack_bits``: a bool array whose ``axis`` has length ``n``."""
    w = np.moveaxis(np.asarray(words, dtype=np.uint64), axis, -1)
    by = np.ascontiguousarray(w.astype("<u8")).view(np.uint8)
    b = np.unpackbits(by, axis=-1, bitorder="little")[..., :n].astype(bool)
    return np.ascontiguousarray(np.moveaxis(b, -1, axis))


def _signs_and_mask(values: np.ndarray, with_mask: bool, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    v = np.asarray(values)
    nonzero = v != 0
    if not with_mask and not nonzero.all():
        raise ValueError(f"{what} holds exact zeros; pack it with a nonzero mask (with_mask=True)")
    return v < 0, (nonzero if with_mask else None)


def pack_values(values: np.ndarray, axis: int = -1, with_mask: bool = False):
    """Pack {-1, 0, +1} values (any sign-carrying numbers) along ``axis``.

    Returns ``(sign_words, mask_words)``; ``mask_words`` is None unless ``with_mask``. Zeros
    without a mask are an error: they are never mapped to +-1 silently.
    """
    neg, nz = _signs_and_mask(values, with_mask, "the tensor")
    return pack_bits(neg, axis), (pack_bits(nz, axis) if nz is not None else None)


def unpack_values(words: np.ndarray, n: int, mask: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Packed words (and optional nonzero mask) -> int8 values in {-1, 0, +1}."""
    v = np.where(unpack_bits(words, n, axis), -1, 1).astype(np.int8)
    if mask is not None:
        v[~unpack_bits(mask, n, axis)] = 0
    return v


def pack_activation(x: np.ndarray, with_mask: bool = False):
    """Logical activation values, NCHW ``[N, C, H, W]`` or ``[N, C]``, to the packed layout
    ``[N, H, W, ceil(C/64)]`` / ``[N, ceil(C/64)]``. Returns ``(bits, mask or None)``."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = np.transpose(x, (0, 2, 3, 1))
    elif x.ndim != 2:
        raise ValueError(f"packed activations are rank 2 or 4, got rank {x.ndim}")
    return pack_values(x, -1, with_mask)


def unpack_activation(bits: np.ndarray, channels: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``pack_activation``: int8 values in logical layout (NCHW or NC)."""
    v = unpack_values(bits, channels, mask, -1)
    return np.ascontiguousarray(np.transpose(v, (0, 3, 1, 2))) if v.ndim == 4 else v


def pack_dense(w: np.ndarray, with_mask: bool = False):
    """A logical weight tensor ({-1, 0, +1}, or any values whose sign is the weight) to the
    artifact's dense bitstream: flattened in C order, element i -> word i // 64, bit i % 64.
    Returns ``(bits, mask or None)``, each uint64 ``[ceil(numel / 64)]``; the mask is the
    nonzero bitplane of ternary weights."""
    return pack_values(np.asarray(w).reshape(-1), -1, with_mask)


def unpack_dense(bits: np.ndarray, shape, mask: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``pack_dense``: int8 {-1, 0, +1} weights of the logical ``shape``."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape)) if shape else 1
    bits = np.asarray(bits).reshape(-1)
    if bits.size != nwords(n) or (mask is not None and np.asarray(mask).size != nwords(n)):
        raise ValueError(f"a bitstream of {n} weights has {nwords(n)} words, got {bits.size}")
    m = None if mask is None else np.asarray(mask).reshape(-1)
    return unpack_values(bits, n, m, -1).reshape(shape)


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of an integer, as int64, via ``llvm.ctpop`` (one POPCNT on x86,
    CNT on AArch64; vectorised by LLVM inside loops). Usable only inside ``@njit`` code."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        r = builder.ctpop(args[0])
        if x.bitwidth < 64:
            r = builder.zext(r, context.get_value_type(types.int64))
        elif x.bitwidth > 64:
            r = builder.trunc(r, context.get_value_type(types.int64))
        return r

    return types.int64(x), codegen
