"""Export one small BNN per user idiom to models/<name>.onnx, with random seeded weights.

Each model is written the way its idiom's authors write it (layers in models/bnn_layers.py), gets
random BatchNorm eval statistics centred on real activations (about 20% negative gammas, see
export_tools.randomize_batchnorm), is exported with torch.onnx.export, checked with onnx.checker,
and written only if onnxruntime reproduces PyTorch on a check batch (max abs diff < 1e-4, argmax
equal). models/idioms.json records, per model, the export call, op counts and the smallest
|pre-binarizer value| seen on the check batch.

Run with the PyTorch venv (not the project venv):
    /work/torchenv/bin/python models/export_idioms.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bnn_layers import (  # noqa: E402
    BinActive,
    BinaryConv2d,
    BinaryLinear,
    BiRealActivation,
    BitorchSign,
    BwnConv2d,
    HardBinaryConv,
    SignActivation,
    TernaryConv2d,
    XnorConv2d,
    XnorLinear,
    where_sign,
)
from export_tools import (  # noqa: E402
    export_and_verify,
    op_counts,
    presign_margin,
    randomize_batchnorm,
    smooth_images,
)

HERE = os.path.dirname(os.path.abspath(__file__))


# -- a. SignSTE (BinaryNet) ------------------------------------------------------------------------
class SignSTECNN(nn.Module):
    """BN -> Hardtanh -> SignSTE -> BinaryConv (pads 1 of +-1 data, i.e. zero padding), float ends."""

    def __init__(self):
        super().__init__()

        def act():
            return [nn.Hardtanh(), SignActivation()]

        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), *act(),
            BinaryConv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), *act(),
            BinaryConv2d(32, 64, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(64), *act(),
            BinaryConv2d(64, 64, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(64), *act(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), BinaryLinear(64 * 4 * 4, 64, bias=False), nn.BatchNorm1d(64), *act(), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


# -- b. XNOR-Net -----------------------------------------------------------------------------------
class XnorBlock(nn.Module):
    """XNOR-Net's BinConv2d order: BN -> BinActive -> conv(sign(W) * mean|W|) -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, pool: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = XnorConv2d(cin, cout, 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x):
        return self.pool(F.relu(self.conv(BinActive.apply(self.bn(x)))))


class XnorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = nn.Sequential(XnorBlock(32, 64, pool=True), XnorBlock(64, 64, pool=True), XnorBlock(64, 64, 2))
        self.bn_fc = nn.BatchNorm1d(64 * 4 * 4)
        self.fc1 = XnorLinear(64 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(F.relu(self.conv0(x))).flatten(1)
        x = F.relu(self.fc1(BinActive.apply(self.bn_fc(x))))
        return self.fc2(x)


# -- c. Bi-Real Net --------------------------------------------------------------------------------
class BiRealBlock(nn.Module):
    """The authors' BasicBlock: real residual + BN(HardBinaryConv(ApproxSign(x)))."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.binary_activation = BiRealActivation()
        self.binary_conv = HardBinaryConv(inplanes, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=stride), nn.Conv2d(inplanes, planes, 1, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        residual = x
        out = self.bn1(self.binary_conv(self.binary_activation(x)))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return out


class TinyBiRealNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.MaxPool2d(2))
        self.layers = nn.Sequential(
            BiRealBlock(32, 32), BiRealBlock(32, 64, stride=2), BiRealBlock(64, 64), BiRealBlock(64, 64, stride=2),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- d. binary-weight network ----------------------------------------------------------------------
class BwnNet(nn.Module):
    """Binary weights, real activations: Conv -> BN -> ReLU (-> MaxPool); many exact zeros reach the convs."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, pool):
            layers = [BwnConv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            *block(32, 64, True), *block(64, 64, True), *block(64, 128, False),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.body(x)


# -- e. ternary weights ----------------------------------------------------------------------------
class TernaryNet(nn.Module):
    """1x28x28 input; TWN weights {-a, 0, +a} on SignSTE-binarized activations."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Hardtanh(), SignActivation(),
            TernaryConv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), SignActivation(), nn.MaxPool2d(2),
            TernaryConv2d(64, 64, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(64), SignActivation(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 10),
        )

    def forward(self, x):
        return self.body(x)


# -- f. explicit +-1 padding (bitorch style) -------------------------------------------------------
class PaddedBinaryConv2d(nn.Conv2d):
    """bitorch's QConv2d: F.pad(x, value=pad_value) then a pads=0 conv with sign weights (0 -> +1)."""

    def __init__(self, cin: int, cout: int, pad_value: float, stride: int = 1):
        super().__init__(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.pad_value = pad_value
        self.weight_sign = BitorchSign()

    def forward(self, x):
        x = F.pad(x, (1, 1, 1, 1), value=self.pad_value)
        return F.conv2d(x, self.weight_sign(self.weight), None, self.stride)


class PadMinusOneNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(32)
        self.conv1 = PaddedBinaryConv2d(32, 64, pad_value=-1.0)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = PaddedBinaryConv2d(64, 64, pad_value=1.0)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = PaddedBinaryConv2d(64, 64, pad_value=-1.0, stride=2)
        self.bn3 = nn.BatchNorm2d(64)
        self.sign = BitorchSign()
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = where_sign(self.bn0(self.conv0(x)))
        x = self.sign(F.max_pool2d(self.bn1(self.conv1(x)), 2))
        x = self.sign(F.max_pool2d(self.bn2(self.conv2(x)), 2))
        return self.fc(self.bn3(self.conv3(x)).flatten(1))


# -- the table of exports --------------------------------------------------------------------------
@dataclass(frozen=True)
class Idiom:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    dynamo: bool
    static_batch: int | None  # None: dynamic batch axis 'N'
    idiom: str


IDIOMS = [
    Idiom("sign_ste_cnn", SignSTECNN, (3, 32, 32), True, None,
          "autograd.Function SignSTE on activations (BN -> Hardtanh -> Sign) and on weights; Conv pads=1 "
          "zero-pads +-1 data; stride-2 binary conv; BinaryLinear; float first conv and last Linear"),
    Idiom("xnornet", XnorNet, (3, 32, 32), False, 1,
          "XNOR-Net: BN -> BinActive (x.sign()) -> Conv(sign(W) * mean|W| per out-channel, computed in "
          "forward, with bias) -> ReLU; XnorLinear on BN1d -> sign"),
    Idiom("birealnet", TinyBiRealNet, (3, 32, 32), True, None,
          "Bi-Real Net: polynomial STE sign.detach() - poly.detach() + poly, HardBinaryConv "
          "(mean|W| * sign(W) via detach trick, flat weights reshaped), real residual Add, AvgPool + 1x1 conv "
          "downsample"),
    Idiom("bwn", BwnNet, (3, 32, 32), False, None,
          "binary-weight network: W + (sign(W) * mean|W| - W).detach(), real activations BN -> ReLU "
          "(exact zeros), MaxPool, float first conv and last Linear"),
    Idiom("ternary", TernaryNet, (1, 28, 28), True, 1,
          "TWN ternary weights {-a, 0, +a} per out-channel (delta = 0.7 * mean|W|, computed in forward) on "
          "SignSTE activations; 1x28x28 input"),
    Idiom("pad_minus_one", PadMinusOneNet, (3, 32, 32), True, 2,
          "bitorch style: F.pad(value=-1.0) and F.pad(value=+1.0) before pads=0 binary convs, sign with "
          "0 -> +1 (Sign -> Equal -> Where) on activations and weights, torch.where(x >= 0, 1., -1.)"),
]


def model_inputs(idiom: Idiom, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration batch for BatchNorm statistics, check batch for the onnxruntime comparison)."""
    if idiom.input_shape == (1, 28, 28):
        from sklearn.datasets import load_digits

        d = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8.0 - 1.0
        x = F.interpolate(d, size=(28, 28), mode="bilinear", align_corners=False)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        return x[perm[:64]], x[perm[64:72]]
    return smooth_images(64, idiom.input_shape, seed), smooth_images(8, idiom.input_shape, seed + 1)


def build_one(idiom: Idiom, seed: int) -> dict:
    torch.manual_seed(seed)
    model = idiom.build()
    calib, check = model_inputs(idiom, seed + 100)
    bn = randomize_batchnorm(model, calib, seed + 200)
    path = os.path.join(HERE, f"{idiom.name}.onnx")
    res = export_and_verify(model, check, path, idiom.dynamo, idiom.static_batch)
    proto: onnx.ModelProto = res.pop("proto")
    graph = proto.graph
    return {
        "file": f"models/{idiom.name}.onnx",
        "bytes": os.path.getsize(path),
        "idiom": idiom.idiom,
        "seed": seed,
        **res,
        "opset": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "input": {"name": graph.input[0].name, "shape": _shape(graph.input[0])},
        "output": {"name": graph.output[0].name, "shape": _shape(graph.output[0])},
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "batchnorm_randomization": bn,
        "op_counts": op_counts(proto),
        "check_batch_presign": presign_margin(proto, check.numpy(), idiom.static_batch),
    }


def _shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=[i.name for i in IDIOMS], help="export only these models")
    args = ap.parse_args(argv)
    record_path = os.path.join(HERE, "idioms.json")
    records = {}
    if os.path.exists(record_path):
        with open(record_path) as f:
            records = json.load(f)
    for k, idiom in enumerate(IDIOMS):
        if args.only and idiom.name not in args.only:
            continue
        rec = build_one(idiom, seed=1000 + k)
        records[idiom.name] = rec
        ops = ", ".join(f"{op} {n}" for op, n in rec["op_counts"].items())
        print(f"{rec['file']:28s} {rec['bytes'] / 1024:7.1f} KiB  ort-vs-torch {rec['max_abs_diff_ort_vs_torch']:.2e}"
              f"  min|presign| {rec['check_batch_presign']['min_abs']}\n    {ops}")
    records["_versions"] = {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    with open(record_path, "w") as f:
        json.dump({k: records[k] for k in [i.name for i in IDIOMS if i.name in records] + ["_versions"]}, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
