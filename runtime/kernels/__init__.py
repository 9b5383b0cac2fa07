"""Kernel registry: importing this package registers every kernel module's kernels."""

from runtime.kernels import (  # noqa: F401  (registration)
    activations,
    binary,
    conv,
    dense,
    elementwise,
    nn,
    norm,
    pool,
    reduce,
    sign,
    standalone,
    tensor,
)
from runtime.kernels.base import KERNELS, Kernel, Step, register

__all__ = ["KERNELS", "Kernel", "Step", "register"]
