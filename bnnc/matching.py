"""Rules several passes share, each written once.

- ``per_channel``: a constant that varies at most along the channel axis (axis 1) of a rank-r
  tensor with C channels, broadcast to [C]. fold-thresholds-into-binary-layers and
  fold-affine-into-binary-output need the same test.
- ``batchnorm_factors``: inference BatchNormalization is ``f * (y - mean) + beta`` per channel
  with ``f = gamma / sqrt(var + eps)``, in float64. fold-batchnorm-into-float-layer folds it into
  weights, fold-affine-into-binary-output into a binary layer's scale and bias.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnnc.ir import const, node_attr


def per_channel(value: ir.Value | None, channels: int, rank: int) -> np.ndarray | None:
    """The float64 [channels] vector of a per-channel (or scalar) constant, or None."""
    c = const(value)
    if c is None or c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (channels,))


def batchnorm_factors(bn: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(f, mean, beta) in float64 with BN(y) = f * (y - mean) + beta, or None when a parameter
    is not constant."""
    params = [const(v) for v in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    eps = float(node_attr(bn, "epsilon", 1e-5))
    return gamma / np.sqrt(var + eps), mean, beta
