"""Train a small BNN on scikit-learn's bundled digits (8x8, no download) and export it to ONNX.

Architecture (BinaryNet style, SignSTE on activations and weights, latent weights clipped to [-1, 1]):

    conv3x3(1->64, float, pads 1) -> BN -> Hardtanh -> Sign                       8x8
    bconv3x3(64->64, sign weights, pads 1) -> BN -> Hardtanh -> Sign               8x8
    bconv3x3(64->64, sign weights, pads 1) -> MaxPool2 -> BN -> Hardtanh -> Sign   4x4
    flatten (K = 1024) -> blinear(1024->128, sign weights) -> BN -> Hardtanh -> Sign
    linear(128->10, float) -> logits

Inputs are pixel / 8 - 1, i.e. in [-1, 1]. Split: train_test_split(test_size=0.25, random_state=0,
stratify=y), so 1347 training and 450 test images. Seeds are fixed and PyTorch runs on one thread
with deterministic algorithms, so a rerun reproduces the same weights on the same machine.

Writes models/digits_bnn.onnx (TorchScript exporter, opset 17, input 'input' [N,1,8,8], output
'logits' [N,10], dynamic batch axis 'N'), models/digits_test.npz (x_test float32 [n,1,8,8], y_test
int64) and models/digits_bnn.json (accuracies from PyTorch and onnxruntime, split, architecture,
training settings, versions).

Run with the PyTorch venv (not the project venv):
    /work/torchenv/bin/python models/train_digits_bnn.py
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import onnx
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bnn_layers import BinaryConv2d, BinaryLinear, SignActivation  # noqa: E402
from export_tools import export_onnx, ort_session, presign_margin  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
SPLIT = {"test_size": 0.25, "random_state": 0, "stratify": "y"}
TRAIN = {"epochs": 150, "batch_size": 64, "optimizer": "Adam", "lr": 3e-3, "schedule": "cosine to 0",
         "weight_decay": 0.0, "latent_weight_clip": 1.0, "loss": "cross-entropy"}
ARCHITECTURE = (
    "conv3x3(1->64,float,p1)-BN-hardtanh-sign | bconv3x3(64->64,p1)-BN-hardtanh-sign | "
    "bconv3x3(64->64,p1)-maxpool2-BN-hardtanh-sign | flatten(1024) | blinear(1024->128)-BN1d-hardtanh-sign | "
    "linear(128->10,float)"
)


class DigitsBNN(nn.Module):
    def __init__(self):
        super().__init__()

        def act():
            return [nn.Hardtanh(), SignActivation()]

        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), *act(),
            BinaryConv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), *act(),
            BinaryConv2d(64, 64, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(64), *act(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), BinaryLinear(64 * 4 * 4, 128, bias=False), nn.BatchNorm1d(128), *act(), nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))

    def binary_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=SPLIT["test_size"], random_state=SPLIT["random_state"], stratify=y)


def train(model: DigitsBNN, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Mini-batch Adam with a cosine schedule; latent binary weights are clipped after each step."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    steps_per_epoch = math.ceil(len(xt) / TRAIN["batch_size"])
    total = TRAIN["epochs"] * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(SEED)
    losses = []
    for _ in range(TRAIN["epochs"]):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        epoch_loss = 0.0
        for i in range(0, len(xt), TRAIN["batch_size"]):
            idx = perm[i:i + TRAIN["batch_size"]]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for m in model.binary_layers():
                    m.weight.clamp_(-TRAIN["latent_weight_clip"], TRAIN["latent_weight_clip"])
            epoch_loss += loss.item() * len(idx)
        losses.append(epoch_loss / len(xt))
    return losses


def main() -> int:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_split()
    model = DigitsBNN()
    losses = train(model, x_train, y_train)
    model.eval()
    with torch.no_grad():
        logits_torch = model(torch.from_numpy(x_test)).numpy()
        train_acc = float((model(torch.from_numpy(x_train)).argmax(1).numpy() == y_train).mean())
    acc_torch = float((logits_torch.argmax(1) == y_test).mean())

    onnx_path = os.path.join(HERE, "digits_bnn.onnx")
    call = export_onnx(model, torch.from_numpy(x_test[:2]), onnx_path, dynamo=False, dynamic_batch=True)
    proto = onnx.load(onnx_path)
    onnx.checker.check_model(proto, full_check=True)
    logits_ort = ort_session(proto).run(None, {"input": x_test})[0]
    acc_ort = float((logits_ort.argmax(1) == y_test).mean())
    same = int((logits_ort.argmax(1) == logits_torch.argmax(1)).sum())
    diff = float(np.abs(logits_ort - logits_torch).max())

    np.savez_compressed(os.path.join(HERE, "digits_test.npz"), x_test=x_test.astype(np.float32),
                        y_test=y_test.astype(np.int64))
    record = {
        "file": "models/digits_bnn.onnx",
        "bytes": os.path.getsize(onnx_path),
        "test_accuracy_torch": acc_torch,
        "test_accuracy_onnxruntime": acc_ort,
        "train_accuracy_torch": train_acc,
        "n_test": len(y_test),
        "predictions_identical_torch_vs_onnxruntime": same,
        "max_abs_diff_onnxruntime_vs_torch": diff,
        "test_set_presign": presign_margin(proto, x_test, None),
        "dataset": "sklearn.datasets.load_digits (bundled), x = pixel / 8 - 1 in [-1, 1], shape [n, 1, 8, 8]",
        "split": {"function": "sklearn.model_selection.train_test_split", **SPLIT,
                  "n_train": len(y_train), "n_test": len(y_test)},
        "architecture": ARCHITECTURE,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "training": {**TRAIN, "seed": SEED, "final_train_loss": losses[-1]},
        "export_call": call,
        "input": {"name": "input", "shape": ["N", 1, 8, 8]},
        "output": {"name": "logits", "shape": ["N", 10]},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
    }
    with open(os.path.join(HERE, "digits_bnn.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"digits BNN: test accuracy torch {acc_torch:.4f}, onnxruntime {acc_ort:.4f} "
          f"({same}/{len(y_test)} identical predictions, max abs diff {diff:.2e}); train accuracy {train_acc:.4f}")
    if same != len(y_test) or min(acc_torch, acc_ort) < 0.93:
        print("error: the exported model does not reproduce PyTorch or is not accurate enough", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
