"""QONNX references on inputs with known answers, and lower-qonnx-ops checked against them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnnc import qonnx
from bnnc.ir import const
from bnnc.pipeline import run_pipeline
from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx
from runtime.errors import BnncError
from tests.helpers import load_graph, make_model, op_counts, producer, run_graph

QD = "qonnx.custom_op.general"
F = np.float32

# the rounding table of the QONNX IntQuant specification
TABLE_X = [5.5, 2.5, 1.6, 1.1, 1.0, -1.0, -1.1, -1.6, -2.5, -5.5]
TABLE = {
    "ROUND": [6, 2, 2, 1, 1, -1, -1, -2, -2, -6],
    "CEIL": [6, 3, 2, 2, 1, -1, -1, -1, -2, -5],
    "FLOOR": [5, 2, 1, 1, 1, -1, -2, -2, -3, -6],
    "UP": [6, 3, 2, 2, 1, -1, -2, -2, -3, -6],
    "DOWN": [5, 2, 1, 1, 1, -1, -1, -1, -2, -5],
    "HALF_UP": [6, 3, 2, 1, 1, -1, -1, -2, -3, -6],
    "HALF_DOWN": [5, 2, 2, 1, 1, -1, -1, -2, -2, -5],
}


@pytest.mark.parametrize("mode", sorted(TABLE))
def test_quant_rounding_modes_match_the_spec_table(mode):
    y = qonnx.quant(np.array(TABLE_X, F), F(1), F(0), F(8), 1, 0, mode)
    np.testing.assert_array_equal(y, np.array(TABLE[mode], F))


def test_quant_round_is_half_to_even_and_scales_back():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 3.25], F)
    np.testing.assert_array_equal(qonnx.quant(x, F(1), F(0), F(8)), [0, 2, 2, 0, -2, 3])
    # x / 0.5 + 1 = 3 -> (3 - 1) * 0.5 = 1; 0.3 / 0.5 + 1 = 1.6 -> 2 -> 0.5
    np.testing.assert_array_equal(qonnx.quant(np.array([1.0, 0.3], F), F(0.5), F(1), F(4)), [1.0, 0.5])


def test_quant_ranges_signed_unsigned_narrow():
    assert qonnx.int_range(True, False, 8) == (-128, 127)
    assert qonnx.int_range(True, True, 8) == (-127, 127)
    assert qonnx.int_range(False, False, 8) == (0, 255)
    assert qonnx.int_range(False, True, 8) == (0, 254)
    x = np.array([-300, 300], F)
    np.testing.assert_array_equal(qonnx.quant(x, F(1), F(0), F(8), 1, 0), [-128, 127])
    np.testing.assert_array_equal(qonnx.quant(x, F(1), F(0), F(8), 1, 1), [-127, 127])
    np.testing.assert_array_equal(qonnx.quant(x, F(1), F(0), F(8), 0, 1), [0, 254])
    np.testing.assert_array_equal(qonnx.quant(x, F(1), F(0), F(2), 1, 0), [-2, 1])


def test_signed_one_bit_quant_is_bipolar_with_zero_to_plus():
    x = np.array([0.0, -0.1, 0.3, -0.0], F)
    np.testing.assert_array_equal(qonnx.quant(x, F(2), F(0), F(1), 1, 0), [2, -2, 2, 2])


def test_bipolar_quant_maps_zero_to_plus_scale():
    x = np.array([[0.0, -1e-30, 3.0], [-0.0, 1e-30, -2.0]], F)
    np.testing.assert_array_equal(qonnx.bipolar_quant(x, F(1)), [[1, -1, 1], [1, 1, -1]])
    s = np.array([[0.5], [2.0]], F)
    np.testing.assert_array_equal(qonnx.bipolar_quant(x, s), [[0.5, -0.5, 0.5], [2, 2, -2]])


def test_multithreshold_counts_thresholds_reached():
    x = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]], F)
    thr = np.array([[0.0, 1.0]], F)
    np.testing.assert_array_equal(qonnx.multithreshold(x, thr), [[0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(qonnx.multithreshold(x, thr, 2.0, -1.0), [[-1, 1, 1, 3, 3]])
    # per-channel thresholds on NCHW and NHWC
    x4 = np.array([1.0, 1.0], F).reshape(1, 2, 1, 1)
    thr2 = np.array([[0.0, 2.0], [0.5, 1.0]], F)
    np.testing.assert_array_equal(qonnx.multithreshold(x4, thr2).ravel(), [1, 2])
    np.testing.assert_array_equal(qonnx.multithreshold(x4.reshape(1, 1, 1, 2), thr2, data_layout="NHWC").ravel(), [1, 2])
    with pytest.raises(BnncError, match="thresholds"):
        qonnx.multithreshold(np.zeros((1, 3), F), thr2)


def test_trunc_v1_and_v2_known_values():
    x = np.array([37.0, -37.0, 200.0], F)
    # v1: floor(37 / 2^(8-4)) = 2, floor(-37/16) = -3; rescaled by the input scale 1
    np.testing.assert_array_equal(qonnx.trunc(x, F(1), F(0), F(8), F(4)), [2, -3, 12])
    # v2: step 2^log2(16/1) = 16, clipped to signed 4 bits [-8, 7], then * out_scale 16
    y = qonnx.trunc(x, F(1), F(0), F(8), F(4), "FLOOR", 1, 0, out_scale=F(16))
    np.testing.assert_array_equal(y, [32, -48, 112])


def test_bad_parameters_are_errors():
    with pytest.raises(BnncError, match="bit width"):
        qonnx.quant(np.zeros(2, F), F(1), F(0), F(2.5))
    with pytest.raises(BnncError, match="rounding mode"):
        qonnx.quant(np.zeros(2, F), F(1), F(0), F(4), rounding_mode="STOCHASTIC")


def test_references_agree_with_the_qonnx_package_if_installed():
    pytest.importorskip("qonnx", reason="the qonnx package is an optional cross-check")
    from qonnx.custom_op.general.bipolar_quant import binary_quant
    from qonnx.custom_op.general.intquant import int_quant

    rng = np.random.default_rng(7)
    for mode in TABLE:
        x = (rng.standard_normal((2, 3, 4)) * 5).astype(F)
        s = (rng.random((1, 3, 1)) + 0.1).astype(F)
        ref = int_quant(x, s, F(1), F(4), 1, 1, mode).astype(F)
        np.testing.assert_array_equal(qonnx.quant(x, s, F(1), F(4), 1, 1, mode), ref)
    x = rng.standard_normal((3, 4)).astype(F)
    np.testing.assert_array_equal(qonnx.bipolar_quant(x, F(0.5)), binary_quant(x, F(0.5)))


# -- lower-qonnx-ops against the references --------------------------------------------------------


def _qmodel(op, extra_inputs, inits, shape, attrs=None, opset=17, domain=QD):
    node = helper.make_node(op, ["x", *extra_inputs], ["q"], name="q_node", domain=domain, **(attrs or {}))
    relu = helper.make_node("Relu", ["q"], ["y"], name="relu")
    return make_model([node, relu], [("x", shape)], [("y", shape)], inits, opset=opset, extra_opsets={domain: 1})


def _lower_and_compare(model, x):
    expected = qonnx.run_reference(model, {"x": x})
    graph = load_graph(model)
    rec = run_pipeline(graph, [LowerQonnxOpsToOnnx()])[0]
    assert not any(n.domain == QD for n in graph.graph), rec.reasons
    np.testing.assert_array_equal(run_graph(graph, {"x": x})[0], expected[0])
    return graph, rec


def _quant_inputs(rng, scale_shape=(1, 3, 1, 1), zeropt=0.0, bits=4.0):
    return {
        "scale": (rng.random(scale_shape) * 0.5 + 0.05).astype(F),
        "zeropt": np.array(zeropt, F),
        "bits": np.array(bits, F),
    }


@pytest.mark.parametrize("mode", [*sorted(TABLE), "ROUND_TO_ZERO", "round"])
@pytest.mark.parametrize("signed,narrow,zeropt", [(1, 0, 0.0), (1, 1, 2.0), (0, 0, 0.0), (0, 1, 3.0)])
def test_lowered_quant_is_bit_exact(mode, signed, narrow, zeropt):
    rng = np.random.default_rng(1)
    inits = _quant_inputs(rng, zeropt=zeropt)
    model = _qmodel("Quant", list(inits), inits, [2, 3, 5, 5],
                    {"signed": signed, "narrow": narrow, "rounding_mode": mode})
    x = (rng.standard_normal((2, 3, 5, 5)) * 2).astype(F)
    x[0, 0, 0, :3] = [0.0, inits["scale"][0, 0, 0, 0] * 0.5, -inits["scale"][0, 0, 0, 0] * 2.5]
    _lower_and_compare(model, x)


@pytest.mark.parametrize("scale,bipolar", [(0.25, True), (1.0, True), (3.0, False), (-0.5, False)])
def test_lowered_one_bit_quant_keeps_the_sign_of_tiny_values(scale, bipolar):
    inits = {"scale": np.full((1, 6), scale, F), "zeropt": np.array(0.0, F), "bits": np.array(1.0, F)}
    model = _qmodel("Quant", list(inits), inits, [4, 6], {"signed": 1, "narrow": 0})
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(F)
    x[0] = [0.0, -0.0, 1e-45, -1e-45, -1e-40, 3e-39]  # x / 3 underflows to -0 for -1e-45
    graph, _ = _lower_and_compare(model, x)
    # 0 < scale <= 1: exactly a BipolarQuant, so it is lowered as one (no Div)
    assert ("Div" not in op_counts(graph)) == bipolar


@pytest.mark.parametrize("scale_shape", [(1,), (1, 3, 1, 1)])
def test_lowered_bipolar_quant_keeps_zero_positive(scale_shape):
    rng = np.random.default_rng(3)
    inits = {"s": (rng.random(scale_shape) + 0.5).astype(F)}
    model = _qmodel("BipolarQuant", ["s"], inits, [2, 3, 4, 4])
    x = rng.standard_normal((2, 3, 4, 4)).astype(F)
    x[:, :, 0, 0] = 0.0
    graph, _ = _lower_and_compare(model, x)
    assert "Where" in op_counts(graph)


@pytest.mark.parametrize("layout,shape,channels", [
    ("NCHW", [2, 3, 4, 4], 3), ("NHWC", [2, 4, 4, 3], 3), ("", [5, 6], 6), ("", [2, 4, 6], 1), ("NC", [5, 6], 1),
])
def test_lowered_multithreshold_is_bit_exact(layout, shape, channels):
    rng = np.random.default_rng(4)
    thr = np.sort(rng.integers(-3, 4, size=(channels, 7)).astype(F), axis=1)
    attrs = {"out_scale": 0.5, "out_bias": -2.0, "out_dtype": "INT4"}
    if layout:
        attrs["data_layout"] = layout
    model = _qmodel("MultiThreshold", ["thr"], {"thr": thr}, shape, attrs)
    x = rng.integers(-4, 5, size=shape).astype(F) + rng.choice([0.0, 0.25], size=shape).astype(F)
    _lower_and_compare(model, x)


@pytest.mark.parametrize("mode", ["FLOOR", "ROUND", "CEIL"])
def test_lowered_trunc_v1_and_v2_are_bit_exact(mode):
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((2, 8)) * 300).astype(F) * F(0.25)
    v1 = {"s": F(0.25), "z": F(0.0), "ib": F(12.0), "ob": F(6.0)}
    model = _qmodel("Trunc", list(v1), {k: np.array(v) for k, v in v1.items()}, [2, 8], {"rounding_mode": mode})
    _lower_and_compare(model, x)
    v2 = {"s": F(0.25), "z": F(1.0), "ib": F(12.0), "os": F(4.0), "ob": F(6.0)}
    model = _qmodel("Trunc", list(v2), {k: np.array(v) for k, v in v2.items()}, [2, 8],
                    {"rounding_mode": mode, "signed": 1, "narrow": 0})
    _lower_and_compare(model, x)


def test_lowering_on_opset_11_uses_older_op_forms():
    rng = np.random.default_rng(6)
    thr = np.sort(rng.standard_normal((3, 3)).astype(F), axis=1)
    model = _qmodel("MultiThreshold", ["thr"], {"thr": thr}, [2, 3, 2, 2], {"out_dtype": "UINT2"}, opset=11)
    graph, _ = _lower_and_compare(model, rng.standard_normal((2, 3, 2, 2)).astype(F))
    assert "GreaterOrEqual" not in op_counts(graph) and "Less" in op_counts(graph)
    model = _qmodel("BipolarQuant", ["s"], {"s": np.array([0.5], F)}, [2, 3], opset=11)
    x = np.array([[0.0, -1.0, 2.0], [-0.0, 1e-45, -1e-45]], F)
    graph, _ = _lower_and_compare(model, x)
    where = producer(graph, "q")
    assert where.op_type == "Where" and where.inputs[0].producer().op_type == "Less"
    np.testing.assert_array_equal(const(where.inputs[1]), [-0.5])


def test_run_reference_executes_mixed_graphs():
    node = helper.make_node("BipolarQuant", ["x", "s"], ["b"], name="bq", domain=QD)
    neg = helper.make_node("Neg", ["b"], ["y"], name="neg")
    model = make_model([node, neg], [("x", [3])], [("y", [3])], {"s": np.array(2.0, F)}, extra_opsets={QD: 1})
    y = qonnx.run_reference(model, {"x": np.array([-1.0, 0.0, 1.0], F)})[0]
    np.testing.assert_array_equal(y, [2.0, -2.0, -2.0])
    assert helper.np_dtype_to_tensor_dtype(y.dtype) == TensorProto.FLOAT
