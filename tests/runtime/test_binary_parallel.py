"""The parallel builds of the binary kernels.

Every binary kernel is compiled twice (runtime/kernels/base.py: Twin) and runs its parallel
build only with more than one thread and at least PARALLEL_WORK of work, which the small test
cases elsewhere never reach. Here the threshold is 0 and Numba has two threads, and a sample of
the kernel tests runs again: same references, same exactness.
"""

from __future__ import annotations

import numba
import pytest

import runtime.kernels.base as base
from runtime.kernels import binary_conv
from tests.runtime import test_binary_conv as conv_tests
from tests.runtime import test_binary_dense as dense_tests
from tests.runtime import test_binary_misc as misc_tests


@pytest.fixture(autouse=True)
def parallel(monkeypatch):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    monkeypatch.setattr(base, "PARALLEL_WORK", 0)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(before)


@pytest.mark.parametrize("path", ["general", "narrow"])
@pytest.mark.parametrize("case", ["K130_1x1_stride2", "c63_3x3_stride2_asym", "group2_c130_unaligned",
                                  "depthwise_mult2_s2", "c3_5x5_pad2_small_image"])
def test_binary_conv(case, path, monkeypatch):
    monkeypatch.setattr(binary_conv, "choose_narrow", lambda *a: path == "narrow")
    for pad_value in (0, -1):
        conv_tests.test_float_output(case, pad_value, path)
        conv_tests.test_bits_output(case, pad_value, path)


@pytest.mark.parametrize("case", ["K65", "K130", "image_c65_hwc"])
def test_binary_dense(case):
    dense_tests.test_float_output(case)
    dense_tests.test_bits_output(case)


@pytest.mark.parametrize("shape", [(2, 65, 4, 1), (1, 130, 2, 3), (2, 130)])
def test_binarize(shape):
    for zero in (1, -1, 0):
        misc_tests.test_binarize(shape, zero)


@pytest.mark.parametrize("case", ["3x3_s2_pad1", "3x3_s2_pad_ceil_asym"])
def test_bit_maxpool(case):
    for with_mask in (False, True):
        for inverted in (False, True):
            misc_tests.test_bit_maxpool(case, with_mask, inverted)
