"""move-binarizers-before-layout-ops: Sign moves up, transposes sink and cancel, same values."""

import numpy as np
from onnx import helper

from passes.canonicalize_binarizers import CanonicalizeBinarizers
from passes.move_binarizers_before_layout_ops import MoveBinarizersBeforeLayoutOps, transpose_equivalent
from tests.helpers import (
    load_graph,
    make_model,
    ort_run,
    run_graph,
)

N = helper.make_node


def _run(nodes, inits, in_shape, out_shape):
    model = make_model(nodes, [("x", in_shape)], [("y", out_shape)], inits)
    graph = load_graph(model)
    CanonicalizeBinarizers().call(graph)
    res = MoveBinarizersBeforeLayoutOps().call(graph)
    graph.graph.sort()
    x = np.random.default_rng(0).standard_normal(in_shape).astype(np.float32)
    x[0, 0, 0, 0] = 0
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], ort_run(model, {"x": x})[0])
    return graph, res


def test_nhwc_island_with_pad_cancels():
    pads = np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64)
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Sign", ["t"], ["s"]),
             N("Pad", ["s", "p", "v"], ["q"]), N("Transpose", ["q"], ["y"], perm=[0, 3, 1, 2])]
    graph, res = _run(nodes, {"p": pads, "v": np.float32(1)}, [1, 3, 4, 5], [1, 3, 6, 7])
    assert [n.op_type for n in list(graph.graph)] == ["Sign", "Pad"]
    assert res.stats["transposes_sunk"] == 1 and res.stats["pairs_merged"] == 1


def test_sign_moves_above_reshape_and_maxpool():
    nodes = [N("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Reshape", ["m", "shape"], ["r"]), N("Sign", ["r"], ["y"])]
    graph, _ = _run(nodes, {"shape": np.array([1, -1], np.int64)}, [1, 3, 4, 4], [1, 12])
    assert [n.op_type for n in list(graph.graph)] == ["Sign", "MaxPool", "Reshape"]


def test_reshape_that_is_a_transpose():
    assert transpose_equivalent((1, 512, 1, 1), (1, 1, 1, 512)) == [0, 2, 3, 1]
    assert transpose_equivalent((1, 4, 2, 1), (1, 2, 4, 1)) is None
    assert transpose_equivalent((1, 4, 1, 1), (1, 4, 1, 1)) is None


def test_sign_beside_other_readers_still_moves_and_cancels():
    """tf2onnx's NHWC island around a binarizer whose input a gating branch also reads (as in
    Real-to-Binary Net): the Transpose stays for the branch, the Sign's copy cancels."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Sign", ["t"], ["s"]),
             N("Transpose", ["s"], ["u"], perm=[0, 3, 1, 2]),
             N("ReduceMax", ["t"], ["g"], axes=[1, 2], keepdims=1),
             N("Transpose", ["g"], ["gt"], perm=[0, 3, 1, 2]), N("Mul", ["u", "gt"], ["y"])]
    graph, res = _run(nodes, {}, [1, 3, 4, 5], [1, 3, 4, 5])
    ops = [n.op_type for n in list(graph.graph)]
    assert res.stats["binarizers_moved"] == 1 and res.stats["pairs_merged"] == 1
    assert ops.count("Transpose") == 2 and ops.index("Sign") < ops.index("Mul")  # the branch's pair only
    sign = next(n for n in graph.graph if n.op_type == "Sign")
    assert sign.inputs[0].name == "x"


def test_sign_stays_below_a_maxpool_with_other_readers():
    """Bi-Real Net's stem: the pooled tensor is both the shortcut and the binarizer's input; the
    float pool stays, so binarizing the pooled (4x smaller) tensor is the cheaper place."""
    nodes = [N("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]), N("Sign", ["m"], ["s"]),
             N("Add", ["s", "m"], ["y"])]
    graph, res = _run(nodes, {}, [1, 3, 4, 4], [1, 3, 2, 2])
    assert res.stats["binarizers_moved"] == 0
    assert [n.op_type for n in list(graph.graph)] == ["MaxPool", "Sign", "Add"]
