"""The kernel interface: one plan step of the artifact becomes one Kernel instance per session.

A kernel is built once when the session loads (``__init__`` sees shapes, dtypes, attributes and
the constant inputs, and may precompute anything: transposed weights, index tables, unpacked
bits) and then called once per inference with ``run(ins, outs, scratch)``. ``outs`` are buffers
the session planned for this step's outputs (shape and dtype from the manifest); ``run`` fills
them.

A kernel object is shared by every thread that runs the session, so after ``__init__`` it is
read-only. Whatever a run writes besides its outputs (a padded copy of the input, a patch
matrix) lives in ``scratch``: the object ``make_scratch()`` returns, made once per workspace
(runtime/session.py: a workspace is used by one inference at a time, so its scratch is never
shared by two threads).

Kernels whose outputs are views of their inputs (Reshape, Flatten, Squeeze...) set
``view = True``: the session allocates nothing for them and ``run(ins, None, scratch)`` returns
the list of output arrays.

Small work runs serially: a parallel Numba kernel pays for waking the thread pool (a few
microseconds with one thread, tens with several on a busy machine) before it does anything, so
parallel kernels get a serial twin (``twin``, ``Twin``) for work below ``PARALLEL_WORK``
elements (or multiply-adds, or word operations).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numba import njit

from runtime.errors import BnncError
from runtime.threads import current_threads

PARALLEL_WORK = 1 << 16  # below this much work (elements, or multiply-adds) a kernel runs serially


def twin(body):
    """(parallel, serial) compiled versions of one kernel body written with ``prange``: the serial
    one (``prange`` is ``range`` there) for work too small to pay for waking the thread pool.
    The serial copy gets its own name, so Numba's on-disk cache keeps the two apart."""
    clone = types.FunctionType(body.__code__, body.__globals__, body.__name__ + "_serial",
                               body.__defaults__, body.__closure__)
    clone.__qualname__ = body.__qualname__ + "_serial"
    clone.__module__ = body.__module__
    return njit(parallel=True, cache=True)(body), njit(cache=True, nogil=True)(clone)


class Twin:
    """A kernel body written with ``prange``, compiled both ways (``twin``); a call names its
    amount of work first, and runs in parallel only when there is enough of it and more than one
    thread to share it: ``kernel(work, *args)``."""

    def __init__(self, body):
        self.parallel, self.serial = twin(body)
        self.__doc__ = body.__doc__

    def __call__(self, work: int, *args):
        if work >= PARALLEL_WORK and current_threads() > 1:
            return self.parallel(*args)
        return self.serial(*args)


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

    def make_scratch(self) -> Any:
        """This kernel's scratch for one workspace (None: it needs none)."""
        return None

    def run(self, ins: list[np.ndarray | None], outs: list[np.ndarray] | None, scratch: Any):
        raise NotImplementedError

    def can_emit(self) -> bool:
        """Whether this kernel writes its step's code (runtime/codegen.py)."""
        return type(self).emit is not Kernel.emit

    def emit(self, e: Any, ins: list[Any], outs: list[Any]) -> None:
        """Write this step into the plan function: ``ins`` and ``outs`` are the source names of
        the input arrays and of the output buffers (for a view, the names to bind)."""
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
