"""The bit convention (runtime/bitpack.py): bit positions, tails, masks, layouts, popcount."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from runtime.bitpack import (
    nwords,
    pack_activation,
    pack_bits,
    pack_dense,
    pack_values,
    popcount,
    tail_mask,
    unpack_activation,
    unpack_bits,
    unpack_dense,
    unpack_values,
)

SIZES = [1, 63, 64, 65, 130]


def test_bit_positions():
    """Element i -> word i // 64, bit i % 64; bit 1 means -1."""
    v = np.ones(130, np.int8)
    v[[0, 5, 63, 64, 129]] = -1
    bits, _ = pack_values(v)
    assert bits.dtype == np.uint64 and bits.shape == (3,)
    assert int(bits[0]) == (1 << 0) | (1 << 5) | (1 << 63)
    assert int(bits[1]) == 1 << 0
    assert int(bits[2]) == 1 << 1  # element 129 = word 2, bit 1; bits 2..63 (the tail) stay 0


@pytest.mark.parametrize("n", SIZES)
def test_roundtrip_and_tails(n):
    rng = np.random.default_rng(n)
    v = rng.choice(np.array([-1, 0, 1], np.int8), size=(3, n, 2))
    bits, mask = pack_values(v, axis=1, with_mask=True)
    assert bits.shape == (3, nwords(n), 2)
    np.testing.assert_array_equal(unpack_values(bits, n, mask, axis=1), v)
    tail = ~tail_mask(n)[-1]
    assert not (bits[:, -1] & tail).any() and not (mask[:, -1] & tail).any()
    assert not (bits & ~mask).any(), "a zero is stored as sign bit 0"
    np.testing.assert_array_equal(unpack_bits(pack_bits(v < 0, 1), n, 1), v < 0)


def test_tail_mask():
    assert [int(w) for w in tail_mask(65)] == [2**64 - 1, 1]
    assert [int(w) for w in tail_mask(64)] == [2**64 - 1]
    assert [int(w) for w in tail_mask(3)] == [7]


def test_zeros_need_a_mask():
    with pytest.raises(ValueError, match="zeros"):
        pack_values(np.array([1, 0, -1]))
    with pytest.raises(ValueError, match="zeros"):
        pack_dense(np.zeros((2, 2)))


def test_activation_layout():
    """NCHW values -> [N, H, W, words] with channel c at word c // 64, bit c % 64."""
    rng = np.random.default_rng(0)
    x = rng.choice(np.array([-1, 1], np.int8), size=(2, 70, 3, 4))
    bits, mask = pack_activation(x)
    assert bits.shape == (2, 3, 4, 2) and mask is None
    n, c, h, w = 1, 66, 2, 3
    assert ((int(bits[n, h, w, c // 64]) >> (c % 64)) & 1) == (x[n, c, h, w] < 0)
    np.testing.assert_array_equal(unpack_activation(bits, 70), x)
    x2 = x[:, :, 0, 0]
    np.testing.assert_array_equal(pack_activation(x2)[0], bits[:, 0, 0])


def test_dense_bitstream():
    """Weights flatten in C order: element (o, c, i, j) is bit number ((o*C + c)*kh + i)*kw + j."""
    rng = np.random.default_rng(1)
    w = rng.choice(np.array([-1, 0, 1], np.int8), size=(3, 5, 3, 3))
    bits, mask = pack_dense(w, with_mask=True)
    assert bits.shape == (nwords(w.size),)
    flat = w.reshape(-1)
    for i in (0, 63, 64, 100, w.size - 1):
        assert ((int(bits[i // 64]) >> (i % 64)) & 1) == (flat[i] < 0)
        assert ((int(mask[i // 64]) >> (i % 64)) & 1) == (flat[i] != 0)
    np.testing.assert_array_equal(unpack_dense(bits, w.shape, mask), w)
    with pytest.raises(ValueError, match="words"):
        unpack_dense(bits[:-1], w.shape)


@njit(cache=True)
def _popcounts(a):
    out = np.empty(a.shape[0], np.int64)
    for i in range(a.shape[0]):
        out[i] = popcount(a[i])
    return out


@njit(cache=True)
def _dot(a, w, k):
    s = 0
    for i in range(a.shape[0]):
        s += popcount(a[i] ^ w[i])
    return k - 2 * s


@njit(cache=True)
def _dot_masked(a, am, w, wm):
    s = 0
    m_total = 0
    for i in range(a.shape[0]):
        m = am[i] & wm[i]
        s += popcount((a[i] ^ w[i]) & m)
        m_total += popcount(m)
    return m_total - 2 * s


def test_popcount_intrinsic():
    vals = np.array([0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 12345678901234567], np.uint64)
    np.testing.assert_array_equal(_popcounts(vals), [bin(int(v)).count("1") for v in vals])
    small = np.array([0, 255, 7], np.uint8)
    np.testing.assert_array_equal(_popcounts(small), [0, 8, 3])
    signed = np.array([-1, 5], np.int64)
    np.testing.assert_array_equal(_popcounts(signed), [64, 2])


@pytest.mark.parametrize("k", SIZES)
def test_dot_identity(k):
    """dot = K - 2 popcount(a xor w); with masks, popcount(m) - 2 popcount((a xor w) & m)."""
    rng = np.random.default_rng(k)
    a, w = rng.choice([-1, 1], size=k), rng.choice([-1, 1], size=k)
    (ab, _), (wb, _) = pack_values(a), pack_values(w)
    assert _dot(ab, wb, k) == int(a @ w)
    a[rng.random(k) < 0.3] = 0
    w[rng.random(k) < 0.3] = 0
    (ab, am), (wb, wm) = pack_values(a, with_mask=True), pack_values(w, with_mask=True)
    assert _dot_masked(ab, am, wb, wm) == int(a @ w)
