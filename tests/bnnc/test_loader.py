"""The loader: external data, old opsets, initializers listed as inputs, dynamic dimensions."""

import numpy as np
import onnx
import pytest
from onnx import helper

from bnnc.ir import shape
from bnnc.loader import load_model, parse_input_shapes
from runtime.errors import BnncError
from tests.helpers import bnnc_run, consts, make_model, names, ort_run, save

N = helper.make_node


def _conv_model(batch="N", opset=17):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    return make_model([N("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [("x", [batch, 3, 6, 6])],
                      [("y", [batch, 4, 6, 6])], {"w": w}, opset=opset)


def test_external_data(tmp_path):
    model = _conv_model()
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    graph = load_model(str(tmp_path / "m.onnx"))
    assert consts(graph)["w"].shape == (4, 3, 3, 3)


def test_old_opset_is_converted(tmp_path):
    nodes = [N("Unsqueeze", ["x"], ["u"], axes=[0]), N("Relu", ["u"], ["y"])]
    model = make_model(nodes, [("x", [3, 4])], [("y", [1, 3, 4])], opset=9)
    graph = load_model(save(model, str(tmp_path)))
    assert graph.opset_imports[""] >= 11
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(bnnc_run(model, {"x": x})[0], np.maximum(x, 0)[None])


def test_initializers_listed_as_inputs_are_constants_unless_shaped(tmp_path):
    model = _conv_model(batch=1)
    model.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 3, 3, 3]))
    path = save(model, str(tmp_path))
    graph = load_model(path)
    assert names(graph.graph.inputs) == ["x"] and "w" in consts(graph)
    graph = load_model(path, parse_input_shapes(["w=4,3,3,3"]))
    assert names(graph.graph.inputs) == ["x", "w"] and "w" not in consts(graph)


def test_dynamic_batch_becomes_one_and_other_dims_need_a_shape(tmp_path):
    graph = load_model(save(_conv_model(), str(tmp_path)))
    assert shape(graph.graph.inputs[0]) == (1, 3, 6, 6) and graph.meta["bnnc.dynamic_batch"]
    x = np.random.default_rng(1).standard_normal((5, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(bnnc_run(_conv_model(), {"x": x})[0], ort_run(_conv_model(), {"x": x})[0], atol=1e-5)
    model = make_model([N("Relu", ["x"], ["y"])], [("x", [1, "C"])], [("y", [1, "C"])])
    with pytest.raises(BnncError, match="--input-shape x="):
        load_model(save(model, str(tmp_path), "dyn.onnx"))
    assert shape(load_model(save(model, str(tmp_path), "dyn.onnx"), {"x": [1, 7]}).graph.inputs[0]) == (1, 7)


@pytest.mark.parametrize("spec", ["x", "x=", "x=1,a", "=1,2", "x=0,3"])
def test_bad_input_shape_specs(spec):
    with pytest.raises(BnncError, match="bad --input-shape"):
        parse_input_shapes([spec])


@pytest.mark.parametrize("size, k, s, pads", [(6, 3, 3, [0, 0, 2, 2]), (7, 3, 2, [1, 1, 1, 1]), (8, 2, 2, [0, 0, 0, 0])])
def test_ceil_mode_maxpool_matches_onnxruntime_window_count(size, k, s, pads):
    nodes = [N("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=1)]
    model = make_model(nodes, [("x", [1, 2, size, size])], [("y", None)])
    x = np.random.default_rng(0).standard_normal((1, 2, size, size)).astype(np.float32)
    expected = ort_run(model, {"x": x})[0]
    np.testing.assert_array_equal(bnnc_run(model, {"x": x})[0], expected)
