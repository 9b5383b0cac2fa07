"""Building blocks for the example BNNs, written the way their authors' code writes them.

Needs PyTorch (a separate venv, see models/README.md); the compiler, the runtime and the tests never
import this module. Each layer keeps the exact forward-pass idiom of its source, because that idiom
is what torch.onnx.export turns into the graph pattern bnnc has to recognise:

- ``SignSTE``: ``torch.autograd.Function`` whose forward is ``torch.sign`` (BinaryNet, Courbariaux
  et al.), gradient clipped to |x| <= 1. Exports as ``Sign``; sign(0) = 0.
- ``BinaryConv2d`` / ``BinaryLinear``: ``SignSTE`` on the latent weights inside ``forward``.
- ``XnorConv2d`` / ``XnorLinear``: XNOR-Net, ``sign(W) * mean(|W|)`` per output channel.
- ``BiRealActivation`` / ``HardBinaryConv``: Bi-Real Net (Liu et al.), the polynomial STE and the
  scaled sign weights written with the ``a.detach() - b.detach() + b`` trick.
- ``BwnConv2d``: binary-weight network, ``W + (sign(W) * mean|W| - W).detach()``.
- ``TernaryConv2d``: TWN, threshold 0.7 * mean|W|, weights {-a, 0, +a} per output channel.
- ``BitorchSign`` / ``where_sign``: +1 at zero, as bitorch and ``torch.where(x >= 0, 1, -1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SignSTE(torch.autograd.Function):
    """sign(x) forward; straight-through gradient, zeroed where |x| > 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class SignActivation(nn.Module):
    def forward(self, x):
        return SignSTE.apply(x)


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose weights are sign(W) in the forward pass (latent float W is trained)."""

    def forward(self, x):
        return F.conv2d(x, SignSTE.apply(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


class BinaryLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, SignSTE.apply(self.weight), self.bias)


def _xnor_alpha(w: torch.Tensor) -> torch.Tensor:
    """mean(|W|) over every axis but the output channel, kept broadcastable."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


class XnorConv2d(nn.Conv2d):
    def forward(self, x):
        w = torch.sign(self.weight) * _xnor_alpha(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class XnorLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, torch.sign(self.weight) * _xnor_alpha(self.weight), self.bias)


class BinActive(torch.autograd.Function):
    """XNOR-Net's activation binarizer (the authors' code calls ``input.sign()``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sign()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.masked_fill(x.abs() > 1, 0)


class BiRealActivation(nn.Module):
    """Bi-Real Net's ApproxSign: forward sign(x), backward the derivative of a piecewise polynomial."""

    def forward(self, x):
        out_forward = torch.sign(x)
        mask1 = x < -1
        mask2 = x < 0
        mask3 = x < 1
        out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
        out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
        out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
        return out_forward.detach() - out3.detach() + out3


class HardBinaryConv(nn.Module):
    """Bi-Real Net's binary conv: flat latent weights, mean|W| * sign(W) per output channel."""

    def __init__(self, in_chn: int, out_chn: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.shape = (out_chn, in_chn, kernel_size, kernel_size)
        # The authors initialise with torch.rand * 0.001 (all positive); a signed init gives
        # the compiler real +-1 patterns to pack.
        self.weights = nn.Parameter(torch.randn((in_chn * out_chn * kernel_size * kernel_size, 1)) * 0.001)

    def forward(self, x):
        real_weights = self.weights.view(self.shape)
        scaling_factor = torch.mean(
            torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True), dim=1, keepdim=True
        )
        scaling_factor = scaling_factor.detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


class BwnConv2d(nn.Conv2d):
    """Binary-weight conv: forward uses sign(W) * mean|W|, gradient flows to W unchanged."""

    def forward(self, x):
        bw = torch.sign(self.weight) * _xnor_alpha(self.weight)
        w = self.weight + (bw - self.weight).detach()
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class TernaryConv2d(nn.Conv2d):
    """TWN: delta = 0.7 * mean|W|, a = mean of |W| above delta, weights a * sign(W) * (|W| > delta)."""

    def forward(self, x):
        absw = self.weight.abs()
        delta = 0.7 * absw.mean(dim=(1, 2, 3), keepdim=True)
        mask = (absw > delta).to(self.weight.dtype)
        alpha = (absw * mask).sum(dim=(1, 2, 3), keepdim=True) / mask.sum(dim=(1, 2, 3), keepdim=True)
        tw = alpha * torch.sign(self.weight) * mask
        w = self.weight + (tw - self.weight).detach()
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class BitorchSign(nn.Module):
    """bitorch's SignFunction: torch.sign, then 0 -> +1."""

    def forward(self, x):
        s = torch.sign(x)
        return torch.where(s == 0, torch.tensor(1.0, device=s.device), s)


def where_sign(x: torch.Tensor) -> torch.Tensor:
    """The one-liner users write: +1 for x >= 0, -1 otherwise."""
    return torch.where(x >= 0, 1.0, -1.0)
