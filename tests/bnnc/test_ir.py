"""The IR helpers over onnx-ir: edits keep graph output names, names stay unique, pruning,
shape inference that never overwrites, attribute conversion, and layer facts on nodes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from bnnc.ir import (
    BNNC_DOMAIN,
    add_const,
    attrs_of,
    bnnc_node,
    const,
    fresh_name,
    make_node,
    new_value,
    prune,
    remove,
    replace_value,
    shape,
)
from bnnc.ir_convert import from_proto, infer_shapes, to_proto, untyped
from bnnc.layers import LayerFacts, bit_tensors, carry, get_layers, manifest_metadata, record_bits, set_layer
from tests.helpers import make_model, names, ort_run

N = helper.make_node


def _chain():
    """x -> Relu(a) -> Neg(b) -> Abs(y)."""
    nodes = [N("Relu", ["x"], ["a"], name="relu"), N("Neg", ["a"], ["b"], name="neg"), N("Abs", ["b"], ["y"], name="abs")]
    return make_model(nodes, [("x", [2, 3])], [("y", [2, 3])])


def test_replacing_a_graph_output_keeps_its_name():
    proto = _chain()
    model = from_proto(proto)
    g = model.graph
    relu, neg, ab = list(g)
    replace_value(g, ab.outputs[0], neg.outputs[0])  # drop the Abs: y is now Neg's output
    remove(g, [ab])
    assert names(g.outputs) == ["y"] and neg.outputs[0].name == "y"
    x = np.array([[-1, 2, 0], [3, -4, 5]], np.float32)
    np.testing.assert_array_equal(ort_run(to_proto(model), {"x": x})[0], -np.maximum(x, 0))


def test_an_output_replaced_by_an_input_gets_an_identity():
    model = from_proto(_chain())
    g = model.graph
    for n in reversed(list(g)):
        replace_value(g, n.outputs[0], n.inputs[0])
        remove(g, [n])
    assert names(g.outputs) == ["y"] and [n.op_type for n in g] == ["Identity"]
    assert names(list(g)[0].inputs) == ["x"]


def test_rename_gives_the_new_value_the_old_name():
    model = from_proto(_chain())
    g = model.graph
    relu, neg, _ = list(g)
    sig = make_node(g, "Sigmoid", [relu.outputs[0]], "neg", "test")
    g.insert_before(neg, sig)
    replace_value(g, neg.outputs[0], sig.outputs[0], rename=True)
    remove(g, [neg])
    assert sig.name != "neg" and sig.outputs[0].name == "b" and sig.metadata_props["bnnc.pass"] == "test"


def test_fresh_names_avoid_every_node_value_and_constant():
    model = from_proto(_chain())
    g = model.graph
    c = add_const(g, np.arange(3, dtype=np.int64), "relu")
    assert c.name == "relu_0" and c.name in g.initializers and shape(c) == (3,)
    assert fresh_name(g, "a") == "a_0" and fresh_name(g, "a") == "a_1" and fresh_name(g, "new") == "new"


def test_prune_drops_dead_nodes_and_unused_constants():
    nodes = [N("Relu", ["x"], ["y"], name="relu"), N("Add", ["x", "k"], ["dead"], name="dead_add")]
    model = from_proto(make_model(nodes, [("x", [3])], [("y", [3])], {"k": np.ones(3, np.float32)}))
    assert prune(model.graph) == 1
    assert [n.name for n in model.graph] == ["relu"] and not model.graph.initializers


def test_infer_shapes_fills_in_what_is_missing_only():
    model = from_proto(_chain())
    g = model.graph
    relu, neg, _ = list(g)
    relu.outputs[0].shape = None
    neg.outputs[0].shape = None
    assert untyped(g)
    infer_shapes(model)
    assert shape(relu.outputs[0]) == (2, 3) and not untyped(g)
    # a custom op's output keeps the shape its pass gave it, downstream ops are inferred from it
    b = bnnc_node(g, "Binarize", [g.inputs[0]], "bin", "test", outputs=[new_value(g, "bits", (2, 1), "uint64")])
    g.append(b)
    cast = make_node(g, "Cast", [b.outputs[0]], "cast", "test", to=int(TensorProto.FLOAT))
    g.append(cast)
    infer_shapes(model)
    assert shape(b.outputs[0]) == (2, 1) and shape(cast.outputs[0]) == (2, 1)
    assert BNNC_DOMAIN in {o.domain for o in to_proto(model).opset_import}


def test_attributes_convert_both_ways():
    model = from_proto(_chain())
    node = make_node(model.graph, "Custom", [], "c", "test", domain=BNNC_DOMAIN, i=3, f=0.5, s="bits", ints=[1, 2],
                     floats=[0.5, 1], empty=[], t=np.arange(4, dtype=np.int32), flag=True)
    a = attrs_of(node)
    assert a["i"] == 3 and a["f"] == 0.5 and a["s"] == "bits" and a["ints"] == [1, 2] and a["floats"] == [0.5, 1.0]
    assert a["empty"] == [] and a["flag"] == 1
    np.testing.assert_array_equal(a["t"], np.arange(4))


def test_from_proto_decodes_constants_once():
    model = from_proto(make_model([N("Add", ["x", "k"], ["y"])], [("x", [3])], [("y", [3])], {"k": np.ones(3, np.float32)}))
    k = model.graph.initializers["k"]
    assert const(k) is const(k)  # one array, not a fresh decode per read


def test_layer_facts_follow_the_nodes_into_the_manifest():
    model = from_proto(_chain())
    g = model.graph
    relu, neg, ab = list(g)
    set_layer(neg, LayerFacts(name="neg", op="Neg", macs=6, weight_bytes=0, order=0))
    set_layer(relu, LayerFacts(name="relu", op="Relu", macs=6, weight_bytes=0, mode="xnor", order=1))
    sig = make_node(g, "Sigmoid", [relu.outputs[0]], "sig", "test")
    carry(neg, sig)
    g.insert_before(neg, sig)
    replace_value(g, neg.outputs[0], sig.outputs[0], rename=True)
    remove(g, [neg])
    # the table keeps the source order, whatever the graph order became
    assert [r["name"] for r in get_layers(manifest_metadata(g))] == ["neg", "relu"]
    b = bnnc_node(g, "Binarize", [g.inputs[0]], "bin", "test", num_outputs=2, zero=0)
    g.insert_before(relu, b)
    record_bits(b.outputs[0], "x", 0, 3, "relu")
    (entry,) = bit_tensors(manifest_metadata(g)).values()
    assert entry == {"source": "x", "zero": 0, "channels": 3, "mask": b.outputs[1].name, "readers": ["relu"]}
