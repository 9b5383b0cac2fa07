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

Consistency: the compiled code indexes without bounds checks, and an artifact may come from
anywhere, so ``__init__`` refuses (``step.error``, a BnncError naming the node) any step whose
declared shapes and dtypes do not follow from its inputs, attributes and constants. The base
class checks how many inputs and outputs a step has (``n_inputs``, ``n_outputs``) and that its
first input and its required outputs are present; the helpers below check dtypes, broadcasting and
output shapes. The session allocates every buffer at its declared shape and dtype and checks
the graph inputs, so once each kernel holds its declared outputs to what it computes, every
array a kernel reads has the shape and dtype it was built for.

Small work runs serially: a parallel Numba kernel pays for waking the thread pool (a few
microseconds with one thread, tens with several on a busy machine) before it does anything, so
parallel kernels get a serial twin (``twin``, ``Twin``) for work below ``PARALLEL_WORK``
elements (or multiply-adds, or word operations).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numba import njit

from runtime.errors import BnncError
from runtime.threads import current_threads
from runtime.validate import MAX_VALUE_BYTES

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


def task_threads(work: int, threads: int) -> int:
    """The threads a ``Twin`` call of this much work runs on: 1 when it takes the serial version,
    which must then also be split for one thread (one band, one task: a 2-thread split run
    serially only adds set-up, 6 us a run on the digits net)."""
    return threads if work >= PARALLEL_WORK and threads > 1 else 1


class Twin:
    """A kernel body written with ``prange``, compiled both ways (``twin``); a call names its
    amount of work first, and runs in parallel only when there is enough of it and more than one
    thread to share it: ``kernel(work, *args)``."""

    def __init__(self, body):
        self.parallel, self.serial = twin(body)
        self.__doc__ = body.__doc__

    def __call__(self, work: int, *args):
        if task_threads(work, current_threads()) > 1:
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
    # how many inputs and outputs the step may have (fewest, most; None: no limit)
    n_inputs: ClassVar[tuple[int, int | None]] = (1, 1)
    n_outputs: ClassVar[tuple[int, int | None]] = (1, 1)

    def __init__(self, step: Step):
        self.step = step
        for what, shapes, (lo, hi) in (("inputs", step.in_shapes, self.n_inputs),
                                       ("outputs", step.out_shapes, self.n_outputs)):
            if len(shapes) < lo or (hi is not None and len(shapes) > hi):
                most = "any number" if hi is None else str(hi)
                raise step.error(f"has {len(shapes)} {what}; it takes {lo} to {most}")
        if not step.in_shapes or step.in_shapes[0] is None:
            raise step.error("its first input is missing")
        if any(s is None for s in step.out_shapes[:self.n_outputs[0]]):
            raise step.error("a required output of the step is unnamed")

    def make_scratch(self) -> Any:
        """This kernel's scratch for one workspace (None: it needs none)."""
        return None

    def overwritable_input(self) -> int | None:
        """The index of an input whose buffer the first output may be written over (the kernel
        reads each element of it before writing the same element of that output, and reads no
        other element after), or None. The session gives the output that buffer when the input
        dies at this step and has the output's shape and dtype."""
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


FLOATS = ("float32", "float64")  # the dtypes the float kernels are compiled for
INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
NUMBERS = FLOATS + INTS  # float16 has no arithmetic in Numba: no kernel takes it
DTYPES = NUMBERS + ("bool",)  # what data movement (views, copies) takes


def check_outputs(step: Step, expect: list[tuple[tuple, str]]) -> None:
    """The step's outputs are exactly ``expect``: (shape, dtype) each."""
    if len(step.out_shapes) != len(expect):
        raise step.error(f"expected {len(expect)} output(s), the plan has {len(step.out_shapes)}")
    for i, (shape, dtype) in enumerate(expect):
        if step.out_shapes[i] is None:
            raise step.error(f"output {i} is unnamed, but the step computes it")
        got = (tuple(step.out_shapes[i]), step.out_dtypes[i])
        if got != (tuple(shape), dtype):
            raise step.error(f"output {i} must be {dtype} {list(shape)}, the plan says {got[1]} {list(got[0])}")


def check_dtypes(step: Step, inputs, allowed, output: bool = True) -> str:
    """The present inputs at indices ``inputs`` (and output 0 when ``output``) share one dtype
    out of ``allowed``; returns it ("" when none of them is present)."""
    got = [step.in_dtypes[i] for i in inputs if i < len(step.in_dtypes) and step.in_shapes[i] is not None]
    got += [step.out_dtypes[0]] if output else []
    if not got:  # only absent optional inputs: nothing to check
        return ""
    if len(set(got)) != 1 or got[0] not in allowed:
        where = "its inputs and output" if output else "its inputs"
        raise step.error(f"{where} must share one dtype out of {', '.join(allowed)}, the plan has {', '.join(map(str, got))}")
    return got[0]


def check_scratch(step: Step, shape, dtype) -> None:
    """A work array of the kernel is bounded like a value of the artifact (runtime/validate.py):
    forged padding or dilation must not make the session allocate without limit."""
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_VALUE_BYTES:
        raise step.error(f"needs a work array of {nbytes:,} bytes (more than {MAX_VALUE_BYTES:,}): its padding, "
                         f"dilation or strides are out of proportion")


def broadcast(step: Step, shapes) -> tuple[int, ...]:
    """The shape ``shapes`` broadcast to (multidirectional, as numpy and ONNX)."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        raise step.error(f"shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast together") from None


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
