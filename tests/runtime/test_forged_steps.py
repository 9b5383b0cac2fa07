"""Forged plan steps: every kernel refuses, with a BnncError naming its node, a step whose declared
shapes or dtypes do not follow from its inputs, attributes and constants (runtime/kernels/base.py).

The artifacts are made the way the fuzzer makes its resealed mutants (tests/fuzz/artifacts.py):
a valid artifact is split, its manifest edited and the checksums recomputed, so only the kernels'
own checks stand between the forgery and compiled code that indexes without bounds checks. The
sessions are built step by step (``plan="steps"``): the checks run when the kernels are built,
before any code is generated or run.

One test forges the output of every step of a one-step artifact for every kernel op (a dimension
one larger, another dtype); the others replay the root causes the fuzz campaign found, each with
the forgery that exposed it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from bnnc.ir import name_nodes
from bnnc.ir_convert import from_proto
from bnnc.lower import lower
from runtime import BnncError, InferenceSession
from runtime.artifact import write_artifact
from runtime.bitpack import nwords, pack_dense
from runtime.kernels import KERNELS
from tests.fuzz import artifacts as fa
from tests.runtime.test_binary_helpers import one_step
from tests.runtime.test_float_helpers import build, randn

R = np.random.default_rng(7)
I64 = np.int64


def _onnx(node, feeds, inits=None, opset=17):
    """(manifest, tensors) of one ONNX node, lowered as written (no passes)."""
    model = from_proto(build([node], feeds, inits, opset))
    name_nodes(model.graph)
    return lower(model, producer="test")


def _packed_conv(masked_w: bool):
    zeros = R.random((6, 5, 3, 3)) < (0.3 if masked_w else 0)
    w, wm = pack_dense(np.where(zeros, 0, R.choice([-1, 1], (6, 5, 3, 3))), masked_w)
    x = np.zeros((1, 6, 7, nwords(5)), np.uint64)
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, cin=5, cout=6)
    scale, bias = R.uniform(0.5, 1, 6).astype(np.float32), randn(6)
    return one_step("bnnc.BinaryConv", attrs, [(x, False), (None, False), (w, True), (wm, True), (scale, True),
                                             (bias, True)], [((1, 6, 6, 7), "float32")])


def _binary_dense():
    w, _ = pack_dense(R.choice([-1, 1], (9, 70)))
    rule = np.array([[0, 0, -1, 1, 1]] * 9, np.int32)
    return one_step("bnnc.BinaryDense", dict(cout=9, k=70, output="bits"), [(np.zeros((2, 2), np.uint64), False), (None, False),
                                                          (w, True), (None, False), (rule, True)],
                 [((2, 1), "uint64")])


def _weight_ops():
    w, _ = pack_dense(R.choice([-1, 1], (4, 3, 3, 3)))
    scale, bias = np.ones(4, np.float32), np.zeros(4, np.float32)
    conv = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, cin=3, cout=4)
    wd, _ = pack_dense(R.choice([-1, 1], (4, 10)))
    return [
        one_step("bnnc.BinaryWeightConv", conv, [(randn(1, 3, 5, 6), False), (w, True), (None, False), (scale, True),
                                              (bias, True)], [((1, 4, 3, 4), "float32")]),
        one_step("bnnc.BinaryWeightDense", dict(cout=4, k=10), [(randn(2, 10), False), (wd, True), (None, False),
                                                             (scale, True), (bias, True)], [((2, 4), "float32")]),
    ]


def _cases():
    """(manifest, tensors) for every kernel op."""
    x, y = randn(2, 3, 5, 6), randn(2, 3, 5, 6, salt=1)
    m, b = randn(4, 6), randn(6, 5)
    n = helper.make_node
    out = [
        one_step("bnnc.Binarize", dict(zero=0), [(x, False)], [((2, 5, 6, 1), "uint64")] * 2),
        one_step("bnnc.BitMaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], channels=3),
              [(np.zeros((2, 6, 6, 1), np.uint64), False)], [((2, 3, 3, 1), "uint64")]),
        one_step("bnnc.Sign", dict(zero=1), [(x, False)], [(x.shape, "float32")]),
        one_step("bnnc.FusedConv", dict(activation="Relu"), [(x, False), (randn(4, 3, 3, 3), True)],
              [((2, 4, 3, 4), "float32")]),
        one_step("bnnc.FusedGemm", dict(activation="Relu"), [(m, False), (b, True)], [((4, 5), "float32")]),
        one_step("bnnc.FusedMatMul", dict(activation="Relu"), [(m, False), (b, True)], [((4, 5), "float32")]),
        _packed_conv(False), _packed_conv(True), _binary_dense(), *_weight_ops(),
    ]
    for op in ("Elu", "Selu", "Celu", "HardSwish", "ThresholdedRelu", "Softsign", "Mish", "Gelu", "Shrink",
               "IsNaN", "IsInf", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "Softmax", "LogSoftmax",
               "Neg", "Abs", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "Sin", "Cos",
               "Softplus", "Erf", "Identity", "Flatten", "GlobalAveragePool", "GlobalMaxPool", "Transpose"):
        out.append(_onnx(n(op, ["x"], ["y"]), {"x": x}, opset=20 if op == "Gelu" else 18))
    for op in ("Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Pow",
               "Min", "Max", "Sum", "Mean", "PRelu"):
        out.append(_onnx(n(op, ["x", "s"], ["y"]), {"x": x}, {"s": randn(6, salt=2)}))
    flags = {"a": x > 0, "c": y > 0}
    for op in ("And", "Or", "Xor"):
        out.append(_onnx(n(op, ["a", "c"], ["y"]), flags))
    out += [
        _onnx(n("Not", ["a"], ["y"]), flags),
        _onnx(n("Where", ["a", "x", "z"], ["y"]), {"a": x > 0, "x": x, "z": y}),
        _onnx(n("Cast", ["x"], ["y"], to=7), {"x": x}),
        _onnx(n("CastLike", ["x", "t"], ["y"]), {"x": x}, {"t": np.zeros(1, I64)}),
        _onnx(n("Clip", ["x", "lo", "hi"], ["y"]), {"x": x}, {"lo": np.float32(-0.5), "hi": np.float32(0.5)}),
        _onnx(n("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1]), {"x": x}, {"w": randn(4, 3, 3, 3), "bias": randn(4)}),
        _onnx(n("Gemm", ["m", "b", "c"], ["y"], transB=1), {"m": m}, {"b": randn(5, 6), "c": randn(5)}),
        _onnx(n("MatMul", ["m", "b"], ["y"]), {"m": m}, {"b": b}),
        _onnx(n("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["y"]), {"x": x},
              {"s": randn(3), "bb": randn(3), "mu": randn(3), "var": np.ones(3, np.float32)}),
        _onnx(n("InstanceNormalization", ["x", "s", "bb"], ["y"]), {"x": x}, {"s": randn(3), "bb": randn(3)}),
        _onnx(n("LayerNormalization", ["x", "s", "bb"], ["y"]), {"x": x}, {"s": randn(6), "bb": randn(6)}),
        _onnx(n("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 2]), {"x": x}),
        _onnx(n("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], pads=[1, 0, 1, 0]), {"x": x}),
        _onnx(n("ReduceSum", ["x", "ax"], ["y"], keepdims=0), {"x": x}, {"ax": np.array([1, 3], I64)}),
        *(_onnx(n(op, ["x"], ["y"], axes=[2]), {"x": x}) for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd")),
        _onnx(n("ArgMax", ["x"], ["y"], axis=2), {"x": x}),
        _onnx(n("ArgMin", ["x"], ["y"], axis=1, keepdims=0), {"x": x}),
        _onnx(n("Reshape", ["x", "shape"], ["y"]), {"x": x}, {"shape": np.array([6, 30], I64)}),
        _onnx(n("Squeeze", ["x1", "ax"], ["y"]), {"x1": randn(2, 1, 5)}, {"ax": np.array([1], I64)}),
        _onnx(n("Unsqueeze", ["x", "ax"], ["y"]), {"x": x}, {"ax": np.array([0], I64)}),
        _onnx(n("Concat", ["x", "z"], ["y"], axis=3), {"x": x, "z": y}),
        _onnx(n("Split", ["x"], ["y", "y2"], axis=3, num_outputs=2), {"x": x}, opset=18),
        _onnx(n("Slice", ["x", "st", "en"], ["y"]), {"x": x}, {"st": np.array([1], I64), "en": np.array([4], I64)}),
        _onnx(n("Gather", ["x", "idx"], ["y"], axis=3), {"x": x}, {"idx": np.array([[0, 5], [1, 1]], I64)}),
        _onnx(n("Expand", ["x", "shape"], ["y"]), {"x": randn(3, 1, 6)}, {"shape": np.array([2, 3, 5, 6], I64)}),
        _onnx(n("Tile", ["x", "rep"], ["y"]), {"x": x}, {"rep": np.array([1, 2, 1, 3], I64)}),
        _onnx(n("Pad", ["x", "p"], ["y"], mode="reflect"), {"x": x}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64)}),
    ]
    return out


CASES = _cases()
# what a forged output may claim instead (the campaign's value_entry mutations: float16 MaxPool and
# bnnc.Sign outputs, an int16 AveragePool, a bool BinaryConv, each accepted by its producer once)
OTHER_DTYPES = {"float32": ["float64", "float16", "int16", "bool"], "float64": ["float32"], "bool": ["int8", "uint8"],
                "int64": ["int32", "float32"], "uint64": ["int64", "float64"]}


def _forged(tmp_path, manifest, tensors, edit) -> str:
    """Write the artifact, then edit its manifest and reseal it as the fuzzer does."""
    path = str(tmp_path / "m.bnn")
    write_artifact(path, manifest, tensors)
    with open(path, "rb") as f:
        m, data = fa.split(f.read())
    edit(m)
    with open(path, "wb") as f:
        f.write(fa.reseal(m, data))
    return path


def _set_value(m: dict, name: str, **field) -> None:
    """Change a value's declaration, and the graph input or output entry that repeats it."""
    m["values"][name].update(field)
    for d in m["inputs"] + m["outputs"]:
        if d["name"] == name:
            d.update(field)


def test_every_kernel_op_is_covered():
    ops = {m["plan"][-1]["op"] for m, _ in CASES}
    assert ops == set(KERNELS), sorted(set(KERNELS) ^ ops)


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: CASES[i][0]["plan"][-1]["op"])
def test_a_forged_output_is_refused_by_its_kernel(tmp_path, case):
    manifest, tensors = CASES[case]
    step = manifest["plan"][-1]
    InferenceSession(_forged(tmp_path, manifest, tensors, lambda m: None), plan="steps")  # the honest one loads
    for name in step["outputs"]:
        value = manifest["values"][name]
        shape = value["shape"][:-1] + [value["shape"][-1] + 1] if value["shape"] else [2]
        for field in [{"shape": shape}] + [{"dtype": d} for d in OTHER_DTYPES[value["dtype"]]]:
            path = _forged(tmp_path, manifest, tensors, lambda m, f=field, v=name: _set_value(m, v, **f))
            with pytest.raises(BnncError, match=f"node '{step['name']}'"):
                InferenceSession(path, plan="steps")


def _refused(tmp_path, case, edit, *needles):
    manifest, tensors = case
    with pytest.raises(BnncError) as e:
        InferenceSession(_forged(tmp_path, manifest, tensors, edit), plan="steps")
    for s in (f"node '{manifest['plan'][-1]['name']}'",) + needles:
        assert s in str(e.value), str(e.value)


def _case(op):
    return next(c for c in CASES if c[0]["plan"][-1]["op"] == op)


def test_conv_input_of_another_dtype_is_refused(tmp_path):
    """Campaign cases 2552, 6687, 17904: a pool's or BinaryConv's output declared float16, int16 or
    bool was accepted by its producer and reached the next Conv, which failed in Numba's typing
    (cases 22484, 23507: a bnnc.Sign output declared int16 or bool even ran, and the Gemm read
    it). The producers refuse now (``test_a_forged_output_is_refused_by_its_kernel``); the
    consumer refuses such an input too."""
    conv = _case("Conv")
    for dtype in ("float16", "bool", "float64"):
        _refused(tmp_path, conv, lambda m, d=dtype: _set_value(m, m["plan"][0]["inputs"][0], dtype=d), "dtype")


def test_huge_number_attribute_is_refused_by_the_validator(tmp_path):
    """A number attribute of 309 digits or more (JSON allows it) overflows ``float()`` in the
    kernels that read one (bnnc.Sign's ``scale``, activation parameters): the validator names the
    attribute instead of leaving it to the session's catch-all for unforeseen kernel errors."""
    manifest, tensors = _case("bnnc.Sign")

    def edit(m):
        m["plan"][0]["attrs"]["scale"] = 10**400

    with pytest.raises(BnncError, match="attribute 'scale'"):
        InferenceSession(_forged(tmp_path, manifest, tensors, edit), plan="steps")


def test_an_unnamed_required_output_is_refused(tmp_path):
    def unname(m, i):
        name = m["plan"][0]["outputs"][i]
        m["plan"][0]["outputs"][i] = ""
        m["outputs"] = [d for d in m["outputs"] if d["name"] != name]

    for op, i in (("Relu", 0), ("Split", 0), ("Split", 1), ("bnnc.Binarize", 1)):
        _refused(tmp_path, _case(op), lambda m, i=i: unname(m, i), "unnamed")


def test_a_step_with_too_many_inputs_is_refused(tmp_path):
    relu = _case("Relu")
    _refused(tmp_path, relu, lambda m: m["plan"][0]["inputs"].append(m["plan"][0]["inputs"][0]), "inputs")


def test_forged_cases_survive_json():
    for m, _ in CASES:  # the fuzzer's reseal goes through JSON: nothing here may need more than JSON holds
        assert json.loads(json.dumps(m)) == m


def test_padding_out_of_proportion_is_refused_before_any_allocation(tmp_path):
    """Padding and dilation within the validator's bounds whose output is small, while the work
    array of the padded input would take tens of gigabytes."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])
    depthwise = _onnx(node, {"x": randn(1, 2, 8, 8)}, {"w": randn(2, 1, 3, 3)})

    def dilate(m):
        m["plan"][0]["attrs"].update(dilations=[32768, 32768], pads=[32768] * 4)  # the same 8 x 8 output

    _refused(tmp_path, depthwise, dilate, "work array")

    def stride(m):  # a 3 x 3 output of a border of -1 words 65536 wide
        m["plan"][0]["attrs"].update(strides=[65536, 65536], pads=[65536] * 4, pad_value=-1)
        _set_value(m, m["plan"][0]["outputs"][0], shape=[1, 6, 3, 3])

    _refused(tmp_path, _case("bnnc.BinaryConv"), stride, "work array")


def _feeds(sess) -> dict:
    rng = np.random.default_rng(0)
    return {a.name: rng.standard_normal(a.shape).astype(a.type[len("tensor("):-1]) for a in sess.get_inputs()}


@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: CASES[i][0]["plan"][-1]["op"])
def test_a_forged_input_is_refused_or_fits(tmp_path, case):
    """The step's first input declared one larger or of another dtype (its output unchanged):
    either its kernel refuses the step, or the step is consistent after all (a slice that ends
    before the new element, a pool whose last window stays the same) and runs."""
    manifest, tensors = CASES[case]
    step = manifest["plan"][-1]
    name = step["inputs"][0]
    value = manifest["values"].get(name)
    if value is None:  # a constant: its shape is the data's own
        return
    shape = value["shape"][:-1] + [value["shape"][-1] + 1] if value["shape"] else [2]
    for field in [{"shape": shape}] + [{"dtype": d} for d in OTHER_DTYPES[value["dtype"]]]:
        path = _forged(tmp_path, manifest, tensors, lambda m, f=field: _set_value(m, name, **f))
        try:
            sess = InferenceSession(path, plan="steps")
        except BnncError as e:
            assert f"node '{step['name']}'" in str(e), str(e)
            continue
        sess.run(None, _feeds(sess))  # consistent after all: it must run (any error here fails)
