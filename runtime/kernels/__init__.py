"""Kernel registry: importing this package registers every kernel module's kernels."""

from runtime.kernels import binary, conv, elementwise, nn, pool, sign, tensor  # noqa: F401  (registration)
from runtime.kernels.base import KERNELS, Kernel, Step, register

__all__ = ["KERNELS", "Kernel", "Step", "register"]
