"""canonicalize-binarizers: every idiom becomes one bnnc.Sign with the right value at 0."""

import numpy as np
import pytest
from onnx import helper

from bnnc.ir import attrs_of, is_bnnc
from passes.canonicalize_binarizers import CanonicalizeBinarizers
from tests.helpers import (
    load_graph,
    make_model,
    ort_run,
    run_graph,
)

SHAPE = [2, 3, 4, 4]


def _x():
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    x[0, 0, 0, :] = 0.0  # exact zeros: the idioms differ exactly there
    return x


def _c(v):
    return np.array(v, np.float32)


N = helper.make_node
IDIOMS = {
    "onnx_sign": ([N("Sign", ["x"], ["y"])], {}, 0, 1.0),
    "larq_ste_sign": ([N("Sign", ["x"], ["s"]), N("Add", ["s", "c"], ["a"]), N("Sign", ["a"], ["y"])], {"c": _c(0.1)}, 1, 1.0),
    "bitorch_where": ([N("Sign", ["x"], ["s"]), N("Equal", ["s", "z"], ["e"]), N("Where", ["e", "one", "s"], ["y"])],
                      {"z": _c(0.0), "one": _c(1.0)}, 1, 1.0),
    "ge_where": ([N("GreaterOrEqual", ["x", "z"], ["t"]), N("Where", ["t", "p", "m"], ["y"])], {"z": _c(0.0), "p": _c(0.5), "m": _c(-0.5)}, 1, 0.5),
    "gt_where": ([N("Greater", ["x", "z"], ["t"]), N("Where", ["t", "p", "m"], ["y"])], {"z": _c(0.0), "p": _c(1.0), "m": _c(-1.0)}, -1, 1.0),
    "lt_where": ([N("Less", ["x", "z"], ["t"]), N("Where", ["t", "m", "p"], ["y"])], {"z": _c(0.0), "p": _c(1.0), "m": _c(-1.0)}, 1, 1.0),
    "le_where": ([N("LessOrEqual", ["x", "z"], ["t"]), N("Where", ["t", "m", "p"], ["y"])], {"z": _c(0.0), "p": _c(2.0), "m": _c(-2.0)}, -1, 2.0),
    "straight_through": ([N("Sign", ["x"], ["s"]), N("Mul", ["x", "k"], ["p"]), N("Tanh", ["p"], ["q"]), N("Sub", ["s", "q"], ["d"]),
                          N("Add", ["d", "q"], ["y"])], {"k": _c(0.3)}, 0, 1.0),
    "scaled": ([N("Sign", ["x"], ["s"]), N("Mul", ["s", "k"], ["y"])], {"k": _c(0.25)}, 0, 0.25),
    "clip_then_sign": ([N("Clip", ["x", "lo", "hi"], ["c"]), N("Sign", ["c"], ["y"])], {"lo": _c(-1.0), "hi": _c(1.0)}, 0, 1.0),
}


@pytest.mark.parametrize("idiom", sorted(IDIOMS))
def test_idiom_becomes_one_sign(idiom):
    nodes, inits, zero, scale = IDIOMS[idiom]
    model = make_model(nodes, [("x", SHAPE)], [("y", SHAPE)], inits)
    graph = load_graph(model)
    res = CanonicalizeBinarizers().call(graph)
    assert res.modified
    assert [n.op_type for n in list(graph.graph)] == ["Sign"] and is_bnnc(list(graph.graph)[0], "Sign")
    attrs = attrs_of(list(graph.graph)[0])
    assert attrs["zero"] == zero and attrs["scale"] == pytest.approx(scale)
    x = _x()
    (before,), (after,) = ort_run(model, {"x": x}), run_graph(graph, {"x": x})
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert after[0, 0, 0, 0] == zero * scale  # the value at exactly 0


@pytest.mark.parametrize("nodes, inits", [
    ([N("GreaterOrEqual", ["x", "z"], ["t"]), N("Where", ["t", "p", "m"], ["y"])], {"z": _c(0.0), "p": _c(1.0), "m": _c(0.0)}),
    ([N("Sign", ["x"], ["s"]), N("Add", ["s", "c"], ["a"]), N("Sign", ["a"], ["y"])], {"c": _c(1.5)}),
])
def test_lookalikes_are_not_binarizers(nodes, inits):
    model = make_model(nodes, [("x", SHAPE)], [("y", SHAPE)], inits)
    graph = load_graph(model)
    CanonicalizeBinarizers().call(graph)
    x = _x()
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0])
    if nodes[-1].op_type == "Where":
        assert not any(is_bnnc(n, "Sign") for n in list(graph.graph))


def test_clip_that_can_change_a_sign_is_kept():
    nodes = [N("Clip", ["x", "lo", "hi"], ["c"]), N("Sign", ["c"], ["y"])]
    model = make_model(nodes, [("x", SHAPE)], [("y", SHAPE)], {"lo": _c(0.5), "hi": _c(1.0)})
    graph = load_graph(model)
    CanonicalizeBinarizers().call(graph)
    assert [n.op_type for n in list(graph.graph)] == ["Clip", "Sign"]
