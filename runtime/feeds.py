"""The inputs a session accepts: names, dtypes, shapes (a batch that is a multiple of the
compiled one, for dynamic-batch artifacts) and, where the plan binarizes, finite values.

``exact`` is the fast path of nearly every call (inputs of exactly the compiled shapes, in a
few attribute reads); ``check`` checks anything else in full and explains what is wrong in a
one-line ``BnncError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import BnncError
from runtime.validate import FINITE, check_finite


class Feeds:
    """The input contract of one artifact: ``inputs`` as its manifest lists them."""

    def __init__(self, inputs: list[dict], dynamic_batch: bool, finite_only: bool):
        self.inputs = inputs
        self.dynamic_batch = dynamic_batch
        self.finite_only = finite_only
        self.specs = [(i["name"], tuple(i["shape"]), np.dtype(i["dtype"])) for i in inputs]
        # per input, the compiled finiteness test of its dtype, for a plan function to run
        # first thing (runtime/program.py), where the plan binarizes
        self.plan_tests = [FINITE.get(d) if finite_only else None for _, _, d in self.specs]
        # what ``exact`` runs on each input: that test (a direct call: check_finite's own checks
        # cost half as much again), check_finite for other float types, nothing where none is due
        self.tests = [(FINITE.get(d) or check_finite) if finite_only and d.kind == "f" else None
                      for _, _, d in self.specs]

    def tested_by_plan(self) -> None:
        """The plan function runs ``plan_tests``: ``exact`` leaves them to it (one call less)."""
        self.tests = [None if p is not None else t for p, t in zip(self.plan_tests, self.tests)]

    def exact(self, feeds: Any) -> list[np.ndarray] | None:
        """The input arrays in plan order when ``feeds`` holds exactly the model's inputs, each a
        C-contiguous ndarray of the compiled shape and dtype (finite where the plan binarizes).
        None for anything else, which ``check`` then checks in full (and explains)."""
        if type(feeds) is not dict or len(feeds) != len(self.specs):
            return None
        xs = []
        for (name, shape, dtype), test in zip(self.specs, self.tests):
            x = feeds.get(name)
            if type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype or not x.flags.c_contiguous:
                return None
            if test is check_finite:
                check_finite(name, x)
            elif test is not None and not test(x):
                check_finite(name, x)  # which says what is wrong
            xs.append(x)
        return xs

    def check(self, feeds: dict[str, Any]) -> tuple[dict[str, np.ndarray], int | None]:
        """(C-contiguous arrays by name, the batch when it differs from the compiled one, else
        None); a BnncError naming the first input that does not fit."""
        if not isinstance(feeds, dict):
            raise BnncError("feeds must be a dict mapping input names to arrays")
        names = [name for name, _, _ in self.specs]
        for k in feeds:
            if k not in names:
                raise BnncError(f"unknown input '{k}' (the model's inputs: {', '.join(names)})")
        arrays = {}
        batch = None
        for n, shape, dtype in self.specs:
            if n not in feeds:
                raise BnncError(f"missing input '{n}'")
            x = feeds[n]
            if not isinstance(x, np.ndarray):
                raise BnncError(f"input '{n}' must be a numpy array, got {type(x).__name__}")
            if x.dtype != dtype:
                raise BnncError(f"input '{n}' has dtype {x.dtype}; the model expects {dtype}")
            if x.shape != shape:
                dyn_ok = (
                    self.dynamic_batch and x.ndim == len(shape) and x.shape[1:] == shape[1:]
                    and x.shape[0] > 0 and x.shape[0] % shape[0] == 0
                )
                if not dyn_ok:
                    want = ("N",) + shape[1:] if self.dynamic_batch else shape
                    raise BnncError(
                        f"input '{n}' has shape {list(x.shape)}; the model expects "
                        f"{list(want)}".replace("'", "")
                    )
                batch = x.shape[0]
            if self.finite_only:  # last: the one check that reads the values (and may compile)
                check_finite(n, x)
            arrays[n] = np.ascontiguousarray(x)
        if batch is not None and any(a.shape[0] != batch for a in arrays.values()):
            raise BnncError("all inputs must have the same batch size")
        return arrays, batch
