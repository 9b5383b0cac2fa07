"""A clock that compiled code reads itself: ``monotonic_ns()`` in a Numba function.

``profile`` times the plan's steps from inside the plan function (``program.Timed``): a clock
read between two steps costs about 30 ns, where calling every step from Python added its
arguments' unboxing and its results' boxing (5-15 us a step with a dozen arrays) to the step's
time, more than some small steps take. The clock is the C library's ``clock_gettime`` with
``CLOCK_MONOTONIC`` (the clock of Python's ``time.monotonic_ns``), declared by name, so that the
compiled code holds no address and Numba's disk cache keeps it. ``AVAILABLE`` is False where
there is no such function (Windows) or its ``struct timespec`` is not two 64-bit words; the
session then times steps from Python.
"""

from __future__ import annotations

import ctypes
import time

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _available() -> bool:
    if not hasattr(time, "CLOCK_MONOTONIC") or ctypes.sizeof(ctypes.c_long) != 8:
        return False
    try:
        return hasattr(ctypes.CDLL(None), "clock_gettime")
    except OSError:
        return False


AVAILABLE = _available()
_CLOCK = getattr(time, "CLOCK_MONOTONIC", 1)


@intrinsic
def monotonic_ns(typingctx):
    """Nanoseconds of the monotonic clock (``time.monotonic_ns``), from compiled code."""

    def codegen(context, builder, sig, args):
        i32, i64, p8 = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, p8]), "clock_gettime")
        ts = cgutils.alloca_once(builder, ir.ArrayType(i64, 2))  # struct timespec: seconds, nanoseconds
        builder.call(fn, [ir.Constant(i32, _CLOCK), builder.bitcast(ts, p8)])
        sec, nsec = (builder.load(builder.gep(ts, [ir.Constant(i32, 0), ir.Constant(i32, j)])) for j in (0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 10**9)), nsec)

    return types.int64(), codegen
