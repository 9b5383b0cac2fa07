"""Every float kernel outside the convolution and dense modules writes its step into the plan
function (runtime/codegen.py): one graph holds one node of each such op of the runtime's
registry, and the session must run it as one generated function (``_plan``) and agree with
onnxruntime; bnnc.Sign, which onnxruntime cannot run, is compared with its
step-by-step ``run``. An op added to those modules without a case here fails the test."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import helper

import bnnc
from runtime import InferenceSession
from runtime.kernels import KERNELS, Step
from runtime.program import call, generate, scratch_arrays
from tests.helpers import make_model, ort_run, save
from tests.runtime.test_float_helpers import compare, randn, rng

MODULES = {"activations", "elementwise", "norm", "pool", "reduce", "sign", "tensor"}
I64 = np.int64

FEEDS = {
    "x": randn(2, 3, 6, 6),
    "w": randn(2, 3, 6, 6, salt=1),
    "p": np.abs(randn(2, 3, 6, 6, salt=2)) + 0.25,
    "s": np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 3.0], np.float32).reshape(2, 4),
    "i": rng(3).integers(-9, 9, size=(2, 3, 4)).astype(I64),
    "b": rng(4).random((2, 3, 6, 6)) > 0.5,
    "c": rng(5).random((2, 3, 6, 6)) > 0.5,
    "u": randn(2, 1, 3, salt=10),
}
INITS = {
    "ax1": np.array([1], I64), "ax02": np.array([0, 2], I64), "pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], I64),
    "starts": np.array([5, 1], I64), "ends": np.array([0, 6], I64), "steps": np.array([-2, 2], I64),
    "axes23": np.array([2, 3], I64), "idx": np.array([[2, -1], [0, 0]], I64), "eshape": np.array([2, 3, 1, 6], I64),
    "reps": np.array([1, 2, 1, 3], I64), "slope": randn(3, 1, 1, salt=6), "sc": randn(3, salt=7),
    "bi": randn(3, salt=8), "lns": randn(6, salt=9), "split": np.array([1, 2], I64), "rshape": np.array([6, -1], I64),
    "cubes": np.array([3.0], np.float32), "zero": np.array(0.0, np.float32),
}
# op -> (inputs, attributes); the output is y_<op>
CASES = {op: (["x"], {}) for op in (
    "Abs", "Ceil", "Cos", "Erf", "Exp", "Floor", "Neg", "Round", "Sign", "Sin", "Softplus", "Relu", "Sigmoid",
    "Tanh", "Elu", "Selu", "Celu", "HardSwish", "Mish", "Gelu", "Softsign", "ThresholdedRelu", "Shrink",
    "Identity", "Flatten", "GlobalAveragePool", "GlobalMaxPool")}
CASES.update({op: (["p"], {}) for op in ("Log", "Sqrt", "Reciprocal")})
CASES.update({op: (["x", "w"], {}) for op in (
    "Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Max", "Min")})
CASES.update({op: (["b", "c"], {}) for op in ("And", "Or", "Xor")})
CASES.update({op: (["s"], {}) for op in ("IsNaN", "IsInf")})
CASES.update({op: (["x", "ax02"], {"keepdims": 0}) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")})
CASES.update({
    "ReduceProd": (["p", "axes23"], {}), "ArgMax": (["x"], {"axis": 2}), "ArgMin": (["x"], {"axis": 1, "keepdims": 0}),
    "Not": (["b"], {}), "Sum": (["x", "w", "p"], {}), "Mean": (["x", "w"], {}), "Pow": (["p", "cubes"], {}),
    "Where": (["b", "x", "zero"], {}), "Cast": (["i"], {"to": 1}), "CastLike": (["x", "i"], {}),
    "PRelu": (["x", "slope"], {}), "Clip": (["x", "zero"], {}), "LeakyRelu": (["x"], {"alpha": 0.2}),
    "HardSigmoid": (["x"], {}), "Softmax": (["x"], {"axis": 2}), "LogSoftmax": (["x"], {}),
    "MaxPool": (["x"], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "AveragePool": (["x"], {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "InstanceNormalization": (["x", "sc", "bi"], {}), "LayerNormalization": (["x", "lns"], {}),
    "Transpose": (["x"], {"perm": [0, 2, 3, 1]}), "Concat": (["x", "w", "p"], {"axis": 2}),
    "Split": (["x", "split"], {"axis": 1}), "Slice": (["x", "starts", "ends", "axes23", "steps"], {}),
    "Gather": (["x", "idx"], {"axis": 3}), "Expand": (["x", "eshape"], {}), "Tile": (["x", "reps"], {}),
    "Pad": (["x", "pads", "zero"], {"mode": "constant"}), "Reshape": (["x", "rshape"], {}),
    "Squeeze": (["u", "ax1"], {}), "Unsqueeze": (["x", "ax1"], {}),
})


def _node(op: str):
    inputs, attrs = CASES[op]
    outputs = [f"y_{op}_{k}" for k in range(2)] if op == "Split" else [f"y_{op}"]
    return helper.make_node(op, inputs, outputs, name=op, **attrs)


def test_every_float_op_runs_as_emitted_code():
    ops = {op for op, cls in KERNELS.items() if cls.__module__.rsplit(".", 1)[-1] in MODULES and "." not in op}
    assert ops - set(CASES) == set(), "ops without a case here"
    nodes = [_node(op) for op in sorted(CASES)]
    inputs = [(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in FEEDS.items()]
    model = make_model(nodes, inputs, [(o, None, 0) for n in nodes for o in n.output], INITS, opset=20)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    expected = ort_run(model, FEEDS)
    with tempfile.TemporaryDirectory() as d:
        sess = InferenceSession(bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=[]).path, plan="emitted")
        assert sess._plan is not None, [type(k).__name__ for k in sess._kernels if not k.can_emit()]
        actual = sess.run(None, FEEDS)
    for o, a, e in zip(model.graph.output, actual, expected, strict=True):
        try:
            compare([a], [e], rel=1e-5)
        except AssertionError as err:
            raise AssertionError(f"{o.name}: {err}") from None


def _emitted(op: str, attrs: dict, ins: list, out_shape, out_dtype) -> np.ndarray:
    """Kernel ``op`` run once as a one-step plan function (every input a run-time input)."""
    step = Step(name=op, op=op, attrs=attrs, in_shapes=[a.shape for a in ins], in_dtypes=[str(a.dtype) for a in ins],
                out_shapes=[tuple(out_shape)], out_dtypes=[out_dtype], consts=[None] * len(ins))
    kernel = KERNELS[op](step)
    names = [f"in{k}" for k in range(len(ins))]
    plan = generate([{"op": op, "name": op, "inputs": names, "outputs": ["y"]}], [kernel], [[0]], 1, {}, names, ["y"],
                    1, "test")
    out = np.full(out_shape, np.nan, out_dtype)
    assert call(plan, ins, [out], scratch_arrays(plan)) == 0 and plan.outputs == [("slot", 0)]
    ref = np.full(out_shape, np.nan, out_dtype)
    kernel.run(ins, [ref], kernel.make_scratch())
    np.testing.assert_array_equal(out, ref)
    return out


def test_sign_emitted_matches_run():
    x = FEEDS["s"].copy()
    for zero, scale in ((0, 1.0), (1, 0.5), (-1, 2.0)):
        y = _emitted("bnnc.Sign", {"zero": zero, "scale": scale}, [x], x.shape, "float32")
        assert y[0, 3] == zero * scale and y[1, 1] == scale and y[1, 2] == -scale and np.isnan(y[0, 0])


def test_large_elementwise_loops_split_over_threads():
    """Elementwise loops of PARALLEL_WORK elements or more go to parallel functions of the plan
    module at two threads (a flat loop, a broadcast one, an operand read twice, a scalar
    constant), with the same results as one thread and onnxruntime; small ones stay inline."""
    from runtime.kernels.base import PARALLEL_WORK

    n, c, h, w = 4, 16, 32, 32
    assert n * c * h * w >= PARALLEL_WORK
    feeds = {"x": randn(n, c, h, w), "k": randn(n, 1, h, w, salt=1), "s": randn(1, 2, 3, salt=2)}
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Mul", ["a", "k"], ["m"]),
             helper.make_node("Mul", ["m", "m"], ["mm"]), helper.make_node("Add", ["mm", "half"], ["y"]),
             helper.make_node("Neg", ["s"], ["small"])]
    inputs = [(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in feeds.items()]
    model = make_model(nodes, inputs, [("y", None, 0), ("small", None, 0)], {"half": np.array(0.5, np.float32)}, opset=17)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    expected = ort_run(model, feeds)
    with tempfile.TemporaryDirectory() as d:
        path = bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=[]).path
        results = {}
        for threads in (1, 2):
            sess = InferenceSession(path, threads=threads, plan="emitted")
            results[threads] = sess.run(None, feeds)
            assert sess._plan.source.count("prange(") == (4 if threads == 2 else 0)
    compare(results[2], expected, rel=1e-6)
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


def test_profile_times_the_steps_inside_the_plan(monkeypatch):
    """``profile`` reads a clock after every step inside one compiled function (program.Timed):
    every step gets a time, a view's is below a 131 K-value step's, the times add up to less
    than the run that holds them, and that function computes what ``run`` computes. Without
    such a clock (``clock.AVAILABLE`` False) the steps are timed from Python instead."""
    import time

    from runtime import clock
    from runtime.program import Timed, output_arrays

    feeds = {"x": randn(2, 16, 64, 64)}
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Flatten", ["a"], ["f"], axis=1),
             helper.make_node("Neg", ["f"], ["y"])]
    model = make_model(nodes, [("x", [2, 16, 64, 64], 1)], [("y", None, 0)], {}, opset=17)
    with tempfile.TemporaryDirectory() as d:
        sess = InferenceSession(bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=[]).path, threads=1,
                                plan="emitted")
        expected = sess.run(None, feeds)[0].copy()
        assert clock.AVAILABLE
        sess.profile(feeds, repeat=1)
        t0 = time.perf_counter()
        times = sess.profile(feeds, repeat=1)
        wall = time.perf_counter() - t0
        assert [op for _, op, _ in times] == ["Abs", "Flatten", "Neg"]
        assert all(t > 0 for *_, t in times) and times[1][2] < times[0][2] and sum(t for *_, t in times) < wall
        timed = Timed(sess._plan)
        with sess._workspace() as ws:
            laps = timed.run(sess._plan, [feeds["x"]], ws.slots, ws.plan_scratch)
            (got,) = output_arrays(sess._plan, [expected.shape], [feeds["x"]], ws.slots, sess._consts)
            np.testing.assert_array_equal(got, expected)
        assert laps.shape == (3,) and (laps >= 0).all()
        monkeypatch.setattr(clock, "AVAILABLE", False)
        assert [op for _, op, t in sess.profile(feeds, repeat=2) if t > 0] == ["Abs", "Flatten", "Neg"]
        assert sess._steps_program is not None  # timed from Python


def test_step_by_step_calls_before_and_after_each_step():
    """The step-by-step run (``profile``'s) calls ``before(i)`` then ``after(i, outputs)`` around
    every step, in order, and ``profile`` at two threads gives every step a time."""
    from runtime.program import Steps

    feeds = {"x": randn(2, 16, 64, 64)}
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    model = make_model(nodes, [("x", [2, 16, 64, 64], 1)], [("y", None, 0)], {}, opset=17)
    with tempfile.TemporaryDirectory() as d:
        sess = InferenceSession(bnnc.compile_model(save(model, d), os.path.join(d, "m.bnn"), passes=[]).path, threads=2,
                                plan="emitted")
        events: list = []
        steps = Steps(sess._plan)
        times = sess.profile(feeds, repeat=3)
        assert [op for _, op, _ in times] == ["Abs", "MaxPool"] and all(t > 0 for *_, t in times)
        with sess._workspace() as ws:
            steps.run(sess._plan, [feeds["x"]], ws.slots, ws.plan_scratch, lambda i, outs: events.append(("after", i)),
                      lambda i: events.append(("before", i)))
    assert events == [("before", 0), ("after", 0), ("before", 1), ("after", 1)]
