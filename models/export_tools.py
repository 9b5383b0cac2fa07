"""Shared helpers for the model scripts: seeded data, BatchNorm randomisation, export and checks.

Needs PyTorch and onnxruntime (the separate venv described in models/README.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

# onnxruntime must reproduce PyTorch to this absolute error before a model is written.
MAX_ABS_DIFF = 1e-4

# The new exporter logs a warning per torchvision op it cannot register; torchvision is not needed.
logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def smooth_images(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Seeded photo-like inputs: coarse noise upsampled (spatially correlated) plus fine noise, ~N(0,1)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn(n, c, max(h // 4, 1), max(w // 4, 1), generator=g)
    x = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.3 * torch.randn(n, c, h, w, generator=g)
    return (x - x.mean()) / x.std()


def randomize_batchnorm(model: nn.Module, calib: torch.Tensor, seed: int, neg_fraction: float = 0.2) -> dict:
    """Give every BatchNorm random eval statistics centred on the data it really sees.

    One eval-mode pass over ``calib`` with a forward pre-hook per BatchNorm (so each layer sees the
    already-randomised layers before it): running_mean = batch_mean + 0.25*N(0,1)*batch_std,
    running_var = batch_var*exp(U(-0.5, 0.5)) (batch_var clamped >= 1e-4), gamma = s*U(0.5, 1.5) with
    s = -1 for about ``neg_fraction`` of channels, beta = 0.2*N(0,1). Folded thresholds then land
    inside the range of the values they compare with, and negative gammas flip comparisons.
    """
    g = torch.Generator().manual_seed(seed)
    counts = {"n_batchnorm": 0, "gamma_channels": 0, "gamma_negative_channels": 0}

    def hook(bn: nn.modules.batchnorm._BatchNorm, args):
        x = args[0].detach()
        dims = [d for d in range(x.dim()) if d != 1]
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False).clamp_min(1e-4)
        c = mean.numel()
        sign = torch.where(torch.rand(c, generator=g) < neg_fraction, -1.0, 1.0)
        bn.running_mean.copy_(mean + 0.25 * torch.randn(c, generator=g) * var.sqrt())
        bn.running_var.copy_(var * torch.exp(torch.rand(c, generator=g) - 0.5))
        bn.weight.data.copy_(sign * (0.5 + torch.rand(c, generator=g)))
        bn.bias.data.copy_(0.2 * torch.randn(c, generator=g))
        counts["n_batchnorm"] += 1
        counts["gamma_channels"] += c
        counts["gamma_negative_channels"] += int((sign < 0).sum())

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    model.eval()
    with torch.no_grad():
        model(calib)
    for h in handles:
        h.remove()
    return counts


def export_onnx(model: nn.Module, example: torch.Tensor, path: str, dynamo: bool, dynamic_batch: bool) -> str:
    """torch.onnx.export with the settings users pass; returns the exact call for the record.

    dynamo=True: opset 18 (the new exporter's lowest), external_data=False so one self-contained file.
    dynamo=False: the TorchScript exporter at opset 17, constant folding on (its default).
    A dynamic batch axis is named 'N' in both.
    """
    names = {"input_names": ["input"], "output_names": ["logits"]}
    if dynamo:
        shapes = ({0: torch.export.Dim("N")},) if dynamic_batch else None
        torch.onnx.export(
            model, (example,), path, dynamo=True, opset_version=18, external_data=False, dynamic_shapes=shapes,
            verbose=False, **names,
        )
        dyn = ", dynamic_shapes=({0: Dim('N')},)" if dynamic_batch else ""
        return f"torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, external_data=False{dyn})"
    axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None
    torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17, dynamic_axes=axes, **names)
    dyn = ", dynamic_axes={'input': {0: 'N'}, 'logits': {0: 'N'}}" if dynamic_batch else ""
    return f"torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17{dyn})"


def ort_session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_ort(sess: ort.InferenceSession, x: np.ndarray, static_batch: int | None) -> np.ndarray:
    """Run ``x`` through ``sess``, in chunks of the static batch size when the model has one."""
    name = sess.get_inputs()[0].name
    if static_batch is None:
        return sess.run(None, {name: x})[0]
    return np.concatenate([sess.run(None, {name: x[i:i + static_batch]})[0] for i in range(0, len(x), static_batch)])


def data_dependent(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors that depend on a graph input (as opposed to weights and constants)."""
    inits = {i.name for i in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    for node in model.graph.node:
        if any(i in live for i in node.input):
            live.update(o for o in node.output if o)
    return live


def presign_margin(model: onnx.ModelProto, x: np.ndarray, static_batch: int | None) -> dict:
    """Smallest |value| entering a data binarizer (Sign, GreaterOrEqual) over the batch ``x``.

    A value within about 1e-6 of zero can be rounded to either side by two correct float engines,
    so a small margin warns that a comparison of outputs may see a legitimate flip.
    """
    live = data_dependent(model)
    probes = list(dict.fromkeys(
        n.input[0] for n in model.graph.node if n.op_type in ("Sign", "GreaterOrEqual") and n.input[0] in live
    ))
    if not probes:
        return {"data_binarizer_inputs": 0, "min_abs": None, "exact_zeros": 0}
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    probed.graph.output.extend(onnx.helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None) for p in probes)
    sess = ort_session(probed)
    name = sess.get_inputs()[0].name
    step = static_batch or len(x)
    runs = [sess.run(probes, {name: x[i:i + step]}) for i in range(0, len(x), step)]
    per = {p: np.concatenate([np.abs(r[k]).ravel() for r in runs]) for k, p in enumerate(probes)}
    return {
        "data_binarizer_inputs": len(probes),
        "min_abs": float(min(v.min() for v in per.values())),
        "exact_zeros": int(sum((v == 0).sum() for v in per.values())),
        "min_abs_per_tensor": {p: float(v.min()) for p, v in per.items()},
    }


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def export_and_verify(model: nn.Module, x_check: torch.Tensor, path: str, dynamo: bool,
                      static_batch: int | None) -> dict:
    """Export to a temporary file, check it, compare onnxruntime with PyTorch, then move it to ``path``.

    ``static_batch`` None exports a dynamic batch axis 'N'; otherwise the batch is fixed to that size.
    Raises RuntimeError (and writes nothing) when onnxruntime disagrees with PyTorch.
    """
    model.eval()
    example = x_check[: static_batch or 2]
    with torch.no_grad():
        want = model(x_check).numpy()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = os.path.join(tmpdir, os.path.basename(path))
        call = export_onnx(model, example, tmp, dynamo, dynamic_batch=static_batch is None)
        proto = onnx.load(tmp)
    onnx.checker.check_model(proto, full_check=True)
    got = run_ort(ort_session(proto), x_check.numpy(), static_batch)
    diff = float(np.abs(got - want).max())
    if not diff < MAX_ABS_DIFF or not np.array_equal(got.argmax(1), want.argmax(1)):
        raise RuntimeError(f"{os.path.basename(path)}: onnxruntime differs from PyTorch by {diff:.3g}")
    onnx.save_model(proto, path)
    return {"export_call": call, "max_abs_diff_ort_vs_torch": diff, "proto": proto}
