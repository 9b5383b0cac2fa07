"""Property: every random BNN (tests/random_bnns.py: all binarizer idioms, +-1/+-alpha/ternary
weights, odd channel counts, kernels 1-5, strides, dilations, asymmetric pads, groups, chains with
ties, PRelu, Clip, residual adds and pools, flatten + dense, inputs with exact zeros) compiles and
agrees with onnxruntime: every binarized tensor bit for bit, the output exactly when it is a
binary layer's own result and within 1e-5 of its scale when a float chain was folded into it."""

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from bnnc.verify import verify
from tests.conftest import budget
from tests.fuzz.source import HypothesisSource
from tests.helpers import save
from tests.random_bnns import random_bnn


@settings(max_examples=budget(300, 20_000))
@given(st.data())
def test_random_bnn_matches_onnxruntime(data):
    model, x, exact, desc = random_bnn(HypothesisSource(data))
    with tempfile.TemporaryDirectory() as d:
        report = verify(save(model, d), {"x": x})
    for layer in report.layers:
        assert layer.differing == 0, f"{desc}: {layer.tensor}: {layer.differing} of {layer.bits} bits differ"
    for name, o in report.outputs.items():
        limit = 0.0 if exact else 1e-5 * max(1.0, o["limit"] / 1e-3)  # verify's limit is 1e-3 of the scale
        assert o["max_abs_error"] <= limit, f"{desc}: output {name}: {o}"
