"""Fuzzing the ONNX loader: every mutant of a small valid model (tests/fuzz/onnx_models.py: byte
flips, truncation, random files, absurd dims, unknown element types, initializers whose dims
disagree with their data, dangling or cyclic inputs, bad opsets, attributes of the wrong type,
external data outside the model's folder) ends in a BnncError or loads; nothing else."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import budget
from tests.fuzz import onnx_models as fm
from tests.fuzz.source import HypothesisSource


@pytest.fixture(scope="module")
def seeds():
    return fm.seed_models()


@settings(max_examples=budget(500, 20_000))
@given(data=st.data())
def test_every_mutant_is_refused_or_loads(seeds, tmp_path_factory, data):
    src = HypothesisSource(data)
    _, raw = fm.mutate(src, src.choice(seeds))
    path = os.path.join(tmp_path_factory.getbasetemp(), "mutant.onnx")
    with open(path, "wb") as f:
        f.write(raw)
    fm.load(path)  # raises anything but a BnncError on a bug
