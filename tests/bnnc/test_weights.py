"""Weight classification (binary, ternary, float) and the dense bitstream layout."""

import numpy as np

from bnnc.weights import DEFAULT_TOL, classify
from runtime.bitpack import pack_dense


def test_binary_with_ulp_noise_and_negative_folded_alphas():
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=(5, 3, 3, 3))
    alpha = np.array([0.5, -1.25, 2.0, 1e-3, 3.0])  # a negative BN factor flips signs, not magnitudes
    w = (signs * alpha[:, None, None, None]).astype(np.float32)
    w = np.where(rng.random(w.shape) < 0.5, np.nextafter(w, np.float32(np.inf)), w)  # an ulp off
    wc = classify(w)
    assert wc.kind == "binary"
    np.testing.assert_allclose(wc.alpha, np.abs(alpha), rtol=1e-6)
    np.testing.assert_array_equal(wc.negative, w < 0)
    assert wc.deviation < 1e-6


def test_ternary_and_float():
    w = np.array([[1, -1, 0, 1], [0, 0, 2, -2], [0, 0, 0, 0]], np.float32)
    wc = classify(w)
    assert wc.kind == "ternary"
    np.testing.assert_array_equal(wc.nonzero, w != 0)
    np.testing.assert_allclose(wc.alpha, [1, 2, 0])
    w2 = np.array([[1, -1, 1, 1.01], [1, 1, -1, 1]], np.float32)
    wc2 = classify(w2)
    assert wc2.kind == "float" and "max deviation" in wc2.reason and wc2.deviation > DEFAULT_TOL


def test_tiny_fan_in_stays_float():
    assert classify(np.array([[1.0], [-2.0]], np.float32)).kind == "float"


def test_weights_pack_by_the_one_convention():
    # the compiler packs weight signs with the runtime's pack_dense: bit 1 means -1
    assert pack_dense(np.array([1, -1, 1, -1.0]))[0].tolist() == [10]
    values = np.ones(130)
    values[[0, 63, 64, 129]] = -1
    words, mask = pack_dense(values)
    assert mask is None and words.dtype == np.uint64 and words.shape == (3,)
    assert int(words[0]) == (1 | (1 << 63)) and int(words[1]) == 1 and int(words[2]) == 2
