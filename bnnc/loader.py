"""Load an ONNX model into the IR (an onnx-ir model): read, convert old opsets, check, fix shapes, infer.

* Reads the file (external data files beside it load too) and runs the ONNX checker.
* Opsets older than MIN_OPSET are converted with onnx's version converter.
* Initializers that are also listed as graph inputs (Brevitas lists dozens) are constants,
  unless the user gives a shape for them with ``--input-shape``, which keeps them inputs.
* A dynamic batch dimension becomes 1 (the runtime then runs any batch size one sample at a
  time); other dynamic dimensions must be given with ``--input-shape NAME=1,3,224,224``.
* Every op must be one bnnc can compile; all the others are reported in one error.
"""

from __future__ import annotations

import os

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from bnnc.ir import name_nodes
from bnnc.ir_convert import from_proto
from bnnc.qonnx import QONNX_DOMAINS, QONNX_OPS
from runtime.errors import BnncError
from runtime.kernels import KERNELS

MIN_OPSET = 11
CONVERT_TO = 13
# ops the compiler removes or evaluates itself, so no kernel is needed at run time
COMPILE_TIME_OPS = {"Constant", "Shape", "Size", "ConstantOfShape", "Dropout", "Range", "NonZero"}
# QONNX ops lowered to standard ops by the pipeline
# standard ops that have no kernel but that constant folding removes when their inputs are
# constant (weights preprocessing); left over at the end they are reported by the lowering
FOLDABLE_OPS = {"Mod", "DequantizeLinear", "QuantizeLinear", "Range", "NonZero", "ReduceL2", "ReduceL1",
                "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum", "Einsum", "OneHot", "TopK",
                "ScatterND", "ScatterElements", "GatherElements", "GatherND", "Trilu", "Mean", "Sum", "BitShift",
                "Xor", "IsNaN", "IsInf", "Hardmax", "Det", "Resize"}


DYNAMIC_BATCH = "bnnc.dynamic_batch"  # model.meta key: the batch dimension was dynamic


def op_key(node: onnx.NodeProto) -> str:
    """The plan/kernel name of a node proto (bnnc.ir.op_key for IR nodes)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def is_supported(node: onnx.NodeProto) -> bool:
    if node.domain in QONNX_DOMAINS:
        return node.op_type in QONNX_OPS
    if node.domain in ("", "ai.onnx") and node.op_type in COMPILE_TIME_OPS | FOLDABLE_OPS:
        return True
    return op_key(node) in KERNELS


def parse_input_shapes(specs: list[str] | tuple[str, ...] | None) -> dict[str, list[int]]:
    """Parse ``NAME=1,3,224,224`` strings."""
    out: dict[str, list[int]] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition("=")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise BnncError(f"bad --input-shape '{spec}': expected NAME=D1,D2,... with positive dims")
        out[name] = shape
    return out


def read_model(path: str) -> onnx.ModelProto:
    if not os.path.isfile(path):
        raise BnncError(f"no such file: '{path}'")
    try:
        model = onnx.load(path)
    except DecodeError:
        raise BnncError(f"'{path}' is not a valid ONNX file (protobuf decoding failed; truncated or not ONNX?)") from None
    except Exception as e:  # onnx raises what the protobuf and file layers raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BnncError(f"cannot load '{path}': {msg}") from e
    if not model.graph.node or not model.opset_import:
        raise BnncError(f"'{path}' is not a valid ONNX model (no graph nodes or no opset)")
    return model


def load_model(path: str, input_shapes: dict[str, list[int]] | None = None) -> ir.Model:
    """Read, check and prepare the model at ``path``; see the module docstring."""
    model = read_model(path)
    input_shapes = dict(input_shapes or {})
    model = _convert_opset(model, path)
    try:  # fills in output shapes some exporters leave out, which the checker insists on
        model = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError):
        pass  # the checker below and the inference after the input fixes report what is wrong
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        # an output whose shape only custom ops could tell is fine: bnnc infers it after lowering
        if "Field 'shape' of 'type' is required" not in first:
            raise BnncError(f"'{path}' fails the ONNX checker: {first}") from None
    except Exception as e:  # the checker itself trips over names that are not UTF-8
        raise BnncError(f"'{path}' fails the ONNX checker: {_first_line(e)}") from None
    _check_supported(model)
    _check_initializers(model, path)
    inits = {t.name for t in model.graph.initializer}
    for name in input_shapes:
        if name not in {i.name for i in model.graph.input}:
            raise BnncError(f"--input-shape names '{name}', which is not a graph input")
    overridden = [t for t in model.graph.initializer if t.name in input_shapes]
    for t in overridden:
        model.graph.initializer.remove(t)
    real_inputs = [i for i in model.graph.input if i.name not in inits or i.name in input_shapes]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    dynamic_batch = _fix_input_shapes(model, input_shapes)
    _clear_stale_shapes(model)
    model = _infer(model, path)
    if _fix_ceil_mode_pools(model):
        _clear_stale_shapes(model)
        model = _infer(model, path)
    try:
        result = from_proto(model)
    except (ir.serde.SerdeError, ValueError, TypeError) as e:  # what the checker lets through
        cause = e.__cause__ or e
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise BnncError(f"'{path}' is not a valid ONNX model: {first}") from e
    result.meta[DYNAMIC_BATCH] = dynamic_batch
    name_nodes(result.graph)
    return result


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _check_initializers(model: onnx.ModelProto, path: str) -> None:
    """Every initializer has a known element type and exactly the data its dims call for (the
    checker accepts a tensor whose dims disagree with its data, and an unknown type)."""
    for t in model.graph.initializer:
        try:
            numpy_helper.to_array(t)
        except Exception as e:
            raise BnncError(f"'{path}': initializer '{t.name}' is malformed ({_first_line(e)})") from None


def _infer(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BnncError(f"shape inference failed on '{path}': {first}") from e


def _fix_ceil_mode_pools(model: onnx.ModelProto) -> bool:
    """MaxPool with ceil_mode=1 becomes ceil_mode=0 with end pads that give the same windows.

    onnxruntime (like PyTorch) drops a last window that would start in the end padding; ONNX shape
    inference keeps it. Padded positions never win a max, so padding the end just enough for the
    onnxruntime window count, with ceil_mode=0, computes the same values and infers the same shape.
    """
    from bnnc.ops import pool_output_hw

    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.input)}
    changed = False
    for node in model.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        shape = shapes.get(node.input[0]) if node.input else None
        if node.op_type != "MaxPool" or not a.get("ceil_mode") or not shape or len(shape) != 4 or min(shape[2:]) < 1:
            continue
        k, st = list(a["kernel_shape"]), list(a.get("strides", [1, 1]))
        pads, dil = list(a.get("pads", [0, 0, 0, 0])), list(a.get("dilations", [1, 1]))
        out = pool_output_hw(shape[2], shape[3], k, st, pads, dil, 1)
        for i in (0, 1):
            span = dil[i] * (k[i] - 1) + 1
            pads[i + 2] = max(0, (out[i] - 1) * st[i] + span - shape[2 + i] - pads[i])
        for x in node.attribute:
            if x.name == "ceil_mode":
                x.i = 0
            elif x.name == "pads":
                del x.ints[:]
                x.ints.extend(pads)
        if "pads" not in a:
            node.attribute.append(onnx.helper.make_attribute("pads", pads))
        changed = True
    return changed


def _convert_opset(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= MIN_OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, CONVERT_TO)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BnncError(f"'{path}' uses opset {version}; converting it to {CONVERT_TO} failed: {first}") from e


def _check_supported(model: onnx.ModelProto) -> None:
    bad: dict[str, list[str]] = {}
    for n in model.graph.node:
        if not is_supported(n):
            bad.setdefault(op_key(n), []).append(n.name or "<unnamed>")
    if bad:
        parts = [f"{op} (node{'s' if len(v) > 1 else ''} {', '.join(repr(x) for x in v)})" for op, v in sorted(bad.items())]
        raise BnncError(f"unsupported op{'s' if len(bad) > 1 else ''}: {'; '.join(parts)}")


def _fix_input_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> bool:
    """Make every graph input shape static; return whether a dynamic batch was set to 1."""
    dynamic_batch = False
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise BnncError(f"graph input '{vi.name}' is not a tensor")
        dims = tt.shape.dim
        if vi.name in input_shapes:
            want = input_shapes[vi.name]
            if tt.HasField("shape"):
                _check_given_shape(vi.name, want, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                                   for d in dims])
            del dims[:]
            for d in want:
                dims.add().dim_value = d
            continue
        if not tt.HasField("shape"):
            raise BnncError(f"graph input '{vi.name}' has no shape; give one with --input-shape {vi.name}=...")
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if k == 0:
                d.Clear()
                d.dim_value = 1
                dynamic_batch = True
            else:
                raise BnncError(
                    f"graph input '{vi.name}' has a dynamic dimension {k} ('{d.dim_param or '?'}'); "
                    f"give its shape with --input-shape {vi.name}=..."
                )
    return dynamic_batch


def _declared(dims: list[int | None]) -> str:
    """A declared shape as the errors show it: dynamic dimensions as N (batch) or ?."""
    return "[" + ", ".join(str(d) if d is not None else ("N" if k == 0 else "?") for k, d in enumerate(dims)) + "]"


def _check_given_shape(name: str, want: list[int], dims: list[int | None]) -> None:
    """--input-shape may fix the dynamic dimensions of an input, not change its rank or static ones."""
    if len(want) != len(dims) or any(d is not None and d != w for d, w in zip(dims, want)):
        raise BnncError(f"--input-shape gives shape {list(want)} for input '{name}'; the model expects {_declared(dims)}")


def check_feeds(model: ir.Model, feeds: dict) -> None:
    """Input arrays against the loaded model's inputs, with the runtime's one-line errors."""
    import numpy as np

    names = [v.name for v in model.graph.inputs]
    for k in feeds:
        if k not in names:
            raise BnncError(f"unknown input '{k}' (the model's inputs: {', '.join(names)})")
    dynamic = bool(model.meta.get(DYNAMIC_BATCH))
    for v in model.graph.inputs:
        if v.name not in feeds:
            raise BnncError(f"missing input '{v.name}'")
        x = feeds[v.name]
        want_dtype = np.dtype(v.dtype.numpy())
        if x.dtype != want_dtype:
            raise BnncError(f"input '{v.name}' has dtype {x.dtype}; the model expects {want_dtype}")
        shape = [int(d) for d in v.shape]
        ok = list(x.shape) == shape or (dynamic and x.ndim == len(shape) and list(x.shape[1:]) == shape[1:]
                                         and x.shape[0] > 0)
        if not ok:
            want = ["N", *shape[1:]] if dynamic else shape
            raise BnncError(f"input {v.name} has shape {list(x.shape)}; the model expects [{', '.join(map(str, want))}]")


def _clear_stale_shapes(model: onnx.ModelProto) -> None:
    """Drop intermediate shapes recorded by the exporter: they may hold the old batch size.
    Outputs keep their rank with every dimension unknown (a graph output must have a shape
    field for onnx.checker; inference fills the dimensions in)."""
    del model.graph.value_info[:]
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                d.Clear()
