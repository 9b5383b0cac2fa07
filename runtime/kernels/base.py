"""The kernel interface: one plan step of the artifact becomes one Kernel instance per session.

A kernel is built once when the session loads (``__init__`` sees shapes, dtypes, attributes and
the constant inputs, and may precompute anything: transposed weights, index tables, unpacked
bits) and then called once per inference with ``run(ins, outs)``. ``outs`` are buffers the
session planned for this step's outputs (shape and dtype from the manifest); ``run`` fills them.

Kernels whose outputs are views of their inputs (Reshape, Flatten, Squeeze...) set
``view = True``: the session allocates nothing for them and ``run(ins, None)`` returns the list
of output arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from runtime.errors import BnncError


@dataclass
class Step:
    """What a kernel knows about its plan step when it is built."""

    name: str
    op: str
    attrs: dict[str, Any]
    in_shapes: list[tuple[int, ...] | None]
    in_dtypes: list[str | None]
    out_shapes: list[tuple[int, ...]]
    out_dtypes: list[str]
    consts: list[np.ndarray | None] = field(default_factory=list)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def error(self, message: str) -> BnncError:
        return BnncError(f"node '{self.name}' ({self.op}): {message}")


class Kernel:
    """Base class; subclasses are registered by op name with ``@register``."""

    view: ClassVar[bool] = False

    def __init__(self, step: Step):
        self.step = step

    def run(self, ins: list[np.ndarray | None], outs: list[np.ndarray] | None):
        raise NotImplementedError


KERNELS: dict[str, type[Kernel]] = {}


def register(*ops: str):
    """Register a Kernel class under one or more plan op names ("Conv", "bnnc.BinaryConv")."""

    def deco(cls: type[Kernel]) -> type[Kernel]:
        for op in ops:
            if op in KERNELS:
                raise RuntimeError(f"kernel for {op} registered twice")
            KERNELS[op] = cls
        return cls

    return deco
