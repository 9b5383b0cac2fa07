"""The reference workloads of the benchmarks: each compiles and matches onnxruntime bit for bit
(at reduced sizes), and the full-size builders have the published shapes and MAC counts."""

import json
import os
import tempfile

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bnnc
from bnnc import workloads
from bnnc.layers import LAYERS_KEY as KEY
from bnnc.verify import verify
from tests.helpers import save

SMALL = {
    "birealnet18": (lambda: workloads.birealnet18(size=32, classes=10, width=16), ["float"] + ["xnor"] * 4 + (["xnor", "float"] + ["xnor"] * 3) * 3 + ["float"]),
    "quicknet": (lambda: workloads.quicknet(size=32, classes=10, width=16, blocks=2), ["float"] * 3 + ["xnor"] * 2 + (["float"] * 2 + ["xnor"] * 2) * 3 + ["float"]),
    "cnv": (lambda: workloads.cnv(width=16, fc=64), ["float"] + ["xnor"] * 7 + ["float"]),
    "mlp": (lambda: workloads.mlp(hidden=96, layers=3), ["binary-weight"] + ["xnor"] * 3),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reduced_workload_compiles_and_matches_onnxruntime(name):
    build, modes = SMALL[name]
    model = build()
    onnx.checker.check_model(model, full_check=True)
    with tempfile.TemporaryDirectory() as d:
        path = save(model, d)
        report = verify(path, samples=2)
        res = bnnc.compile_model(path, os.path.join(d, "m.bnn"))
    assert report.ok, report.outputs
    assert report.layers and all(x.differing == 0 for x in report.layers), [vars(x) for x in report.layers]
    layers = json.loads(res.manifest["metadata"][KEY])
    assert [r["mode"] for r in layers] == modes, [(r["name"], r["mode"], r["reason"]) for r in layers]


def _conv_macs(model: onnx.ModelProto) -> tuple[int, int]:
    """(binary, float) MACs of the Conv/Gemm layers: binary where every weight is +-1."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    binary = real = 0
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            w = weights[n.input[1]]
            macs = int(np.prod(shapes[n.output[0]])) * int(np.prod(w.shape[1:]))
            if np.all(np.abs(w) == 1):
                binary += macs
            else:
                real += macs
    return binary, real


def test_full_size_birealnet18_has_the_published_shape():
    binary, real = _conv_macs(workloads.birealnet18())
    assert binary == 1_676_279_808  # 16 binary 3x3 convs: 1.68 G binary MACs
    assert 130e6 < real < 140e6  # 7x7 stem, three 1x1 shortcuts, FC 512 -> 1000


def test_full_size_mlp_and_cnv_shapes():
    binary, real = _conv_macs(workloads.mlp())
    assert binary == 784 * 1024 + 2 * 1024 * 1024 + 1024 * 10 and real == 0
    binary, real = _conv_macs(workloads.cnv())
    assert real == 30 * 30 * 64 * 27 + 512 * 10
