"""InferenceSession: load an artifact, build one kernel per plan step, plan buffers, run.

The API mirrors onnxruntime's: ``InferenceSession(path, threads=None)``, ``run(output_names,
feeds)``, ``get_inputs()``, ``get_outputs()``.

Buffers are planned once per session (runtime/buffers.py): a value's buffer is reused by a
later value of the same shape and dtype once its last reader has run; graph outputs keep their
own and are copied out; a kernel's output may take the buffer of an input that dies at its step
(``Kernel.overwritable_input``).

``run`` is thread-safe, as onnxruntime's is. Kernels are read-only after loading; everything an
inference writes (the planned buffers, each kernel's scratch) belongs to a workspace, which one
inference uses at a time. The session keeps its idle workspaces: a session used from one thread
holds one workspace, used from n threads at once up to n.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from runtime import clock
from runtime.artifact import read_artifact
from runtime.blas import calls_gemm
from runtime.buffers import plan_buffers
from runtime.errors import BnncError
from runtime.feeds import Feeds
from runtime.kernels import KERNELS
from runtime.kernels.base import Step
from runtime.program import Steps, Timed, call, emittable, generate, output_arrays, scratch_arrays
from runtime.threads import limit_threads, max_threads, numba_threads, wake_pool
from runtime.validate import binarizes, check_finite


@dataclass(frozen=True)
class NodeArg:
    """An input or output description, like onnxruntime's NodeArg."""

    name: str
    shape: list[int | str]
    type: str


@dataclass
class _Workspace:
    """What one inference writes: the planned buffers (``slots``; ``bufs``, the same arrays as a
    list per step, None for views) and the scratch of the plan function (``plan_scratch``) or of
    each kernel when steps run one by one (``scratch``, made on first use). Used by one thread at
    a time."""

    slots: list[np.ndarray]
    bufs: list[list[np.ndarray | None] | None]
    plan_scratch: list[np.ndarray]
    scratch: list[Any] | None = None
    outs: list[np.ndarray] | None = None  # the plan's outputs in this workspace, unless one is an input


class InferenceSession:
    def __init__(self, path: str, threads: int | None = None, plan: str | None = None):
        """``plan``: "emitted" (the default) runs the generated plan function; "steps" runs the
        kernels one by one from Python, which compiles nothing per model (the test suite's default
        for its many one-off graphs). None: the environment variable BNNC_PLAN, else "emitted"."""
        self._path = str(path)
        self._threads = _check_threads(threads)
        mode = plan if plan is not None else os.environ.get("BNNC_PLAN", "emitted")
        if mode not in ("emitted", "steps"):
            raise BnncError(f"plan must be 'emitted' or 'steps', got {mode!r}")
        self.manifest, self._consts = read_artifact(self._path)
        self._finite_only = binarizes(self.manifest)
        m = self.manifest
        try:
            self._values = {k: (tuple(v["shape"]), v["dtype"]) for k, v in m["values"].items()}
            self._inputs = m["inputs"]
            self._outputs = m["outputs"]
            plan = m["plan"]
        except (KeyError, TypeError, ValueError):
            raise BnncError(f"'{self._path}' has a corrupted manifest (missing plan or values)") from None
        self._dynamic_batch = bool(m.get("dynamic_batch", False))
        self._feeds = Feeds(self._inputs, self._dynamic_batch, self._finite_only)
        self._out_names = [o["name"] for o in self._outputs]
        self._out_shapes = [tuple(o["shape"]) for o in self._outputs]
        self._kernels = [self._build(s) for s in plan]
        self._steps = plan
        self._slots, self._step_slots = plan_buffers(plan, [k.view for k in self._kernels], self._values,
                                                     self._out_names, [k.overwritable_input() for k in self._kernels])
        self._nthreads = self._threads or numba.get_num_threads()
        self._plan = None
        if mode == "emitted" and emittable(self._kernels):
            self._plan = generate(plan, self._kernels, self._step_slots, len(self._slots), self._consts,
                                  [i["name"] for i in self._inputs], [o["name"] for o in self._outputs],
                                  self._nthreads, os.path.basename(self._path), self._feeds.plan_tests)
            self._feeds.tested_by_plan()
        self._plan_blas = self._plan is not None and any(calls_gemm(f) for f in self._plan.functions.values())
        self._steps_program: Steps | None = None
        self._timed: Timed | None = None
        self._plan_warm = False  # the plan function has run once in this session
        self._lock = threading.Lock()
        self._idle: list[_Workspace] = [self._new_workspace()]

    # -- public API ---------------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [self._arg(i) for i in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [self._arg(o) for o in self._outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Run the model on ``feeds`` and return the requested outputs (all when None)."""
        names = self._out_names
        wanted = names if output_names is None else list(output_names)
        if wanted is not names:
            for n in wanted:
                if n not in names:
                    raise BnncError(f"unknown output '{n}' (the model's outputs: {', '.join(names)})")
        xs = self._feeds.exact(feeds) if self._plan is not None else None
        if xs is not None:
            return self._run_plan(xs, wanted)
        arrays, batch = self._feeds.check(feeds)
        ws = self._take_workspace()
        try:
            with limit_threads(self._nthreads):
                if batch is None:
                    env = self._infer(ws, arrays)
                    return [env[n].copy() for n in wanted]
                parts: list[list[np.ndarray]] = [[] for _ in wanted]
                b = self._inputs[0]["shape"][0]
                for i in range(0, batch, b):
                    env = self._infer(ws, {k: v[i:i + b] for k, v in arrays.items()})
                    for j, n in enumerate(wanted):
                        parts[j].append(env[n].copy())
        finally:
            self._idle.append(ws)  # list.append is atomic
        return [np.concatenate(p, axis=0) for p in parts]

    def _run_plan(self, xs: list[np.ndarray], wanted: list[str]) -> list[np.ndarray]:
        """``run`` on inputs of exactly the compiled shapes, dtypes and layout: one call of the
        plan function, the outputs copied out of the workspace before another run may take it."""
        ws = self._take_workspace()
        try:
            if self._plan_blas:
                with limit_threads(self._nthreads):
                    outs = self._call_plan(xs, ws)
            else:
                numba_threads(self._nthreads)
                outs = self._call_plan(xs, ws)
            if wanted is self._out_names:
                return [a.copy() for a in outs]
            return [outs[self._out_names.index(n)].copy() for n in wanted]
        finally:
            self._idle.append(ws)

    def _infer(self, ws: _Workspace, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference: the plan function when there is one, else the steps one by one."""
        if self._plan is None:
            return self._execute(ws, feeds)
        outs = self._call_plan([feeds[i["name"]] for i in self._inputs], ws)
        return {o["name"]: a for o, a in zip(self._outputs, outs)}

    def _call_plan(self, xs: list[np.ndarray], ws: _Workspace) -> list[np.ndarray]:
        """The plan function on the inputs; the outputs where it left them (``ws.outs``, else
        views of the inputs). Its first call (which compiles it on a cold cache) lets a helper
        process compile kernels beside it (runtime/prefetch.py)."""
        if self._plan_warm:
            status = call(self._plan, xs, ws.slots, ws.plan_scratch)
        else:
            from runtime import prefetch  # not at import: ``python -m runtime.prefetch`` imports this module first

            with prefetch.alongside(self._plan.function, self._path, self._nthreads):
                status = call(self._plan, xs, ws.slots, ws.plan_scratch)
            self._plan_warm = True
        if status:  # an input failed the plan's finiteness test: say what is wrong with it
            i = status - 1
            check_finite(self._inputs[i]["name"], xs[i])
            raise BnncError(f"input '{self._inputs[i]['name']}' holds NaN or Inf; bnnc needs finite inputs")
        return ws.outs if ws.outs is not None else output_arrays(self._plan, self._out_shapes, xs, ws.slots,
                                                                 self._consts)

    def run_with_values(self, feeds: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
        """Run once on feeds of exactly the compiled shapes and return copies of the named
        values, intermediate ones included (``bnnc verify`` compares them with onnxruntime).
        The kernels run one by one from Python (no compile per model); buffers are reused
        between values, so each is copied right after it is computed."""
        arrays, batch = self._feeds.check(feeds)
        if batch is not None:
            raise BnncError("run_with_values needs inputs of exactly the compiled shapes")
        wanted = set(names)
        taken: dict[str, np.ndarray] = {n: arrays[n].copy() for n in wanted if n in arrays}
        taken.update({n: self._consts[n].copy() for n in wanted if n in self._consts})
        with limit_threads(self._nthreads), self._workspace() as ws:
            self._execute(ws, arrays, lambda name, value: taken.__setitem__(name, value.copy()) if name in wanted else None)
        return taken

    # -- internals ----------------------------------------------------------------------------
    def _arg(self, d: dict) -> NodeArg:
        shape: list[int | str] = list(d["shape"])
        if self._dynamic_batch and shape:
            shape[0] = "batch"
        return NodeArg(d["name"], shape, f"tensor({d['dtype']})")

    def _build(self, s: dict):
        op = s.get("op")
        cls = KERNELS.get(op)
        if cls is None:
            raise BnncError(f"'{self._path}' needs kernel '{op}', which this runtime does not have")
        ins, outs = s["inputs"], s["outputs"]
        step = Step(
            name=s.get("name", op),
            op=op,
            attrs=s.get("attrs", {}),
            in_shapes=[self._shape_of(n) for n in ins],
            in_dtypes=[self._dtype_of(n) for n in ins],
            out_shapes=[self._values[n][0] if n else None for n in outs],  # "": an optional output
            out_dtypes=[self._values[n][1] if n else None for n in outs],  # the node does not produce
            consts=[self._consts.get(n) if n else None for n in ins],
        )
        try:
            return cls(step)
        except BnncError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as ex:
            # a kernel's own checks did not foresee this combination: still the artifact's fault
            raise step.error(f"the artifact's plan does not fit this kernel ({type(ex).__name__}: {ex})") from None

    def _shape_of(self, name: str):
        if not name:
            return None
        if name in self._consts:
            return tuple(self._consts[name].shape)
        return self._values[name][0]

    def _dtype_of(self, name: str):
        if not name:
            return None
        if name in self._consts:
            return str(self._consts[name].dtype)
        return self._values[name][1]

    def _new_workspace(self) -> _Workspace:
        arrays = [np.empty(shape, dtype=dtype) for shape, dtype in self._slots]
        bufs = [None if slots is None else [None if j is None else arrays[j] for j in slots]
                for slots in self._step_slots]
        ws = _Workspace(arrays, bufs, scratch_arrays(self._plan) if self._plan else [])
        if self._plan is not None and all(kind != "input" for kind, _ in self._plan.outputs):
            ws.outs = output_arrays(self._plan, self._out_shapes, [], arrays, self._consts)
        return ws

    def _take_workspace(self) -> _Workspace:
        """An idle workspace of this session's for one inference, else a new one: one thread
        running the session keeps reusing the same one; n threads at once make n. (list.pop
        and list.append are atomic in CPython: no lock needed.)"""
        try:
            return self._idle.pop()
        except IndexError:
            return self._new_workspace()

    @contextmanager
    def _workspace(self):
        ws = self._take_workspace()
        try:
            yield ws
        finally:
            self._idle.append(ws)

    def profile(self, feeds: dict[str, Any], repeat: int = 10) -> list[tuple[str, str, float]]:
        """Median seconds of every plan step over ``repeat`` runs: (node name, op, seconds).
        The emitted plan times its steps itself (``program.Timed``: a clock read after every
        step inside the compiled function); without a clock compiled code can read, or
        without an emitted plan, every step is called and timed from Python."""
        arrays, batch = self._feeds.check(feeds)
        if batch is not None:
            raise BnncError("profile needs inputs of exactly the compiled shapes")
        times: list[list[float]] = [[] for _ in self._steps]
        with limit_threads(self._nthreads), self._workspace() as ws:
            for _ in range(repeat):
                if self._plan is None:
                    self._execute(ws, arrays, timings=times)
                elif clock.AVAILABLE:
                    for t, lap in zip(times, self._timed_run(ws, arrays)):
                        t.append(float(lap))
                else:
                    laps = _Laps(times)
                    self._step_by_step(ws, arrays, laps, laps.start)
        return [(s["name"], s["op"], float(np.median(t))) for s, t in zip(self._steps, times)]

    def _timed_run(self, ws: _Workspace, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the plan's timed function (``program.Timed``, made on first use): the
        seconds of every step."""
        with self._lock:
            if self._timed is None:
                self._timed = Timed(self._plan)
        return self._timed.run(self._plan, [feeds[i["name"]] for i in self._inputs], ws.slots, ws.plan_scratch)

    def _step_by_step(self, ws: _Workspace, feeds: dict[str, np.ndarray], after, before=None) -> None:
        """The plan's emitted code one step at a time (``program.Steps``), made on first use."""
        with self._lock:
            if self._steps_program is None:
                self._steps_program = Steps(self._plan)
        self._steps_program.run(self._plan, [feeds[i["name"]] for i in self._inputs], ws.slots, ws.plan_scratch,
                                after, before)

    def _execute(self, ws: _Workspace, feeds: dict[str, np.ndarray], observe=None, timings=None) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = dict(self._consts)
        env.update(feeds)
        if ws.scratch is None:
            ws.scratch = [k.make_scratch() for k in self._kernels]
        for i, (s, k, bufs, sc) in enumerate(zip(self._steps, self._kernels, ws.bufs, ws.scratch)):
            ins = [env[n] if n else None for n in s["inputs"]]
            t0 = time.perf_counter() if timings is not None else 0.0
            try:
                res = k.run(ins, bufs, sc)
            except (ValueError, TypeError, IndexError) as ex:  # numpy's shape checks caught a forged plan
                raise k.step.error(f"the artifact's plan does not fit this kernel ({type(ex).__name__}: {ex})") from None
            if timings is not None:
                timings[i].append(time.perf_counter() - t0)
            outs = res if k.view else bufs
            for n, a in zip(s["outputs"], outs):
                if not n:
                    continue
                env[n] = a
                if observe is not None:
                    observe(n, a)
        return env


class _Laps:
    """Step-by-step timing: ``start(i)`` just before step i, the callback just after it
    appends its time (by ``clock``) to ``times[i]``. Only the step's own call is timed, not
    the gathering of its arguments. With several threads ``start`` first wakes the thread pool:
    between two steps called from Python its workers may have gone to sleep (they spin only
    about 0.1 ms), and waking them costs 30-80 us on a VM, which inside the plan function a
    parallel kernel following a parallel kernel does not pay (it made every parallel step of
    Bi-Real Net 18 look hardly faster at 2 threads than at 1)."""

    def __init__(self, times: list[list[float]], clock=time.perf_counter):
        self.times, self.clock = times, clock
        self.last = clock()

    def start(self, i: int) -> None:
        wake_pool()
        self.last = self.clock()

    def __call__(self, i: int, _outs) -> None:
        now = self.clock()
        self.times[i].append(now - self.last)
        self.last = now


def _check_threads(n):
    """None (Numba's current thread count when the session runs) or a count, capped at the
    pool size. Either way the same count bounds the BLAS threads (see runtime.threads)."""
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise BnncError(f"threads must be a positive integer, got {n!r}")
    return min(n, max_threads())
