"""Fuzzing the artifact reader and the session: every mutant of a valid artifact (tests/fuzz/
artifacts.py: truncated, bit-flipped, random files, header fields, and resealed manifests with
absurd shapes, bad offsets, wrong dtypes, dangling names, deep nesting, forged tensor bytes) ends in
a BnncError or loads and runs; nothing else. `make fuzz` runs the big campaign in subprocesses
with a memory limit and a per-input time limit (tests/fuzz/campaign.py), every mutation through
the session and a run."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import BnncError, InferenceSession
from runtime.artifact import read_artifact
from runtime.validate import MAX_JSON_DEPTH
from tests.conftest import budget
from tests.fuzz import artifacts as fa
from tests.fuzz.source import HypothesisSource


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fa.seed_artifacts(str(tmp_path_factory.mktemp("seeds")))


def _mutant(seeds, tmp_path_factory, data, mutators=None):
    src = HypothesisSource(data)
    _, raw = fa.mutate(src, src.choice(seeds), mutators)
    path = os.path.join(tmp_path_factory.getbasetemp(), "mutant.bnn")
    with open(path, "wb") as f:
        f.write(raw)
    return path


@settings(max_examples=budget(1000, 20_000))
@given(data=st.data())
def test_every_mutant_is_refused_or_runs(seeds, tmp_path_factory, data):
    """Raw byte mutations and resealed schema violations, through the session and one run."""
    fa.load_and_run(_mutant(seeds, tmp_path_factory, data, fa.RAW + fa.SCHEMA))  # a bug raises


@settings(max_examples=budget(1000, 20_000))
@given(data=st.data())
def test_every_mutant_is_refused_or_read(seeds, tmp_path_factory, data):
    """Every mutation, forged attributes and rewired plans included, through the reader and
    runtime.validate (whether the kernels then accept it is the campaign's business)."""
    fa.read(_mutant(seeds, tmp_path_factory, data))  # a bug raises


def _write(tmp_path, raw):
    path = tmp_path / "m.bnn"
    path.write_bytes(raw)
    return str(path)


def _refused(tmp_path, raw, *needles):
    with pytest.raises(BnncError) as e:
        InferenceSession(_write(tmp_path, raw))
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_targeted_forgeries_are_refused_with_a_reason(seeds, tmp_path):
    manifest, data = fa.split(seeds[0])

    def forged(edit):
        m = json.loads(json.dumps(manifest))
        edit(m)
        return fa.reseal(m, data)

    first = sorted(manifest["tensors"])[0]
    other = sorted(manifest["tensors"])[1]
    step = manifest["plan"][2]
    _refused(tmp_path, forged(lambda m: m["tensors"][first].update(shape=[10**6, 10**6], nbytes=4 * 10**12)), "bytes")
    _refused(tmp_path, forged(lambda m: m["tensors"][first].update(shape=[2**32, 2**32, 4], nbytes=0)), first)
    _refused(tmp_path, forged(lambda m: m["tensors"][first].update(offset=-64)), "offset")
    _refused(tmp_path, forged(lambda m: m["tensors"][other].update(offset=m["tensors"][first]["offset"])), "overlap")
    _refused(tmp_path, forged(lambda m: m["tensors"][first].update(dtype="object")), "dtype")
    _refused(tmp_path, forged(lambda m: m["values"][step["outputs"][0]].update(shape=[10**12])), "shape")
    _refused(tmp_path, forged(lambda m: m["values"][step["outputs"][0]].update(shape=[2**20] * 4)), "bytes")
    _refused(tmp_path, forged(lambda m: m["values"][step["outputs"][0]].update(dtype="float128")), "dtype")
    _refused(tmp_path, forged(lambda m: m["plan"][2]["inputs"].__setitem__(0, "nowhere")), "nowhere")
    _refused(tmp_path, forged(lambda m: m["plan"].reverse()), "reads")
    _refused(tmp_path, forged(lambda m: m["plan"].__delitem__(0)), "reads")
    _refused(tmp_path, forged(lambda m: m["plan"][2].update(attrs={"k": {"a": 1}})), "attribute 'k'")
    _refused(tmp_path, forged(lambda m: m["plan"][2].update(op=7)), "'op'")
    _refused(tmp_path, forged(lambda m: m["plan"][2].pop("outputs")), "'outputs'")
    _refused(tmp_path, forged(lambda m: m["inputs"][0].update(shape=[1, 2])), "input")
    _refused(tmp_path, forged(lambda m: m["outputs"].append({"name": "nowhere", "shape": [], "dtype": "float32"})), "nowhere")
    _refused(tmp_path, forged(lambda m: m.update(format_version=1)), "format_version")
    deep = "[" * 100_000 + "]" * 100_000
    _refused(tmp_path, fa.seal(deep.encode(), data), "nested")
    shallow_enough = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    _refused(tmp_path, fa.seal(shallow_enough.encode(), data), "nested")
    _refused(tmp_path, fa.seal(b'{"a": ' + b"9" * 5000 + b"}", data), "corrupted manifest")
    _refused(tmp_path, fa.seal(b"[1, 2]", data), "not a JSON object")


def test_header_claims_are_never_trusted(seeds, tmp_path):
    raw = bytearray(seeds[0])
    raw[16:24] = (10**12).to_bytes(8, "little")  # a terabyte manifest: refused before any read
    _refused(tmp_path, bytes(raw), "manifest")
    _refused(tmp_path, seeds[0][:30], "truncated")
    _refused(tmp_path, b"", "magic")
    _refused(tmp_path, fa.seal(b"{}", b"", version=1), "version 1", "recompile")
    os.mkfifo(tmp_path / "fifo.bnn")
    for special in (tmp_path, tmp_path / "fifo.bnn"):
        with pytest.raises(BnncError, match="not a regular file"):
            read_artifact(str(special))


def test_a_valid_artifact_still_loads_and_runs(seeds, tmp_path):
    for raw in seeds:
        assert fa.load_and_run(_write(tmp_path, raw)) == "ran"


def test_non_finite_inputs_are_refused(seeds, tmp_path):
    sess = InferenceSession(_write(tmp_path, seeds[0]))
    arg = sess.get_inputs()[0]
    x = np.ones([1] + arg.shape[1:], np.float32)
    big = np.full_like(x, np.finfo(np.float32).max)  # finite, though its float32 sum is not
    assert sess.run(None, {arg.name: big})[0].shape[0] == 1
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y.reshape(-1)[-1] = bad
        with pytest.raises(BnncError, match="NaN or Inf"):
            sess.run(None, {arg.name: y})
