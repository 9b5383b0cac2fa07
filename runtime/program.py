"""The plan function of a session: every step's emitted code joined into one Numba function.

Values become variables of the generated function: graph inputs and workspace buffers are its
parameters (``x<i>``, ``b<slot>``), constants travel packed, one array per dtype, and are cut
back into their names by the function's first lines (``pack_constants``), and a view step
(Reshape, Flatten...) binds a new name to a view of its input. The buffer slots are
the session's plan (runtime/session.py): a slot whose value died is reused by a later value.
The function returns 0, or i + 1 when input i failed its finiteness test (the first thing it
runs, where the plan binarizes), and nothing else: the graph outputs are workspace buffers (or
inputs, or constants) the session knows from ``Plan.outputs`` and copies out, so no array
object is made for the return (0.7 us a call for a tuple of one).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from runtime.codegen import Emitter, Expr, Plan, function_source, load_module, module_source


def emittable(kernels: list) -> bool:
    """Whether every kernel of the plan writes code (``Kernel.emit``)."""
    return all(k.can_emit() for k in kernels)


def generate(steps: list[dict], kernels: list, step_slots: list, n_slots: int, consts: dict[str, np.ndarray],
             inputs: list[str], outputs: list[str], threads: int, model: str, finite: list | None = None) -> Plan:
    """The plan function of these steps for ``threads`` threads, compiled (lazily, on its first
    call) from a module of its own in the kernel cache. ``finite[i]``: the finiteness test the
    function runs on input i before anything else (runtime/validate.py, ``FINITE``), or None."""
    e = Emitter(threads)
    env: dict[str, Expr] = {n: Expr(f"x{i}") for i, n in enumerate(inputs)}
    root: dict[str, tuple[str, Any]] = {n: ("input", i) for i, n in enumerate(inputs)}
    segments: list[tuple[list[str], list[str]]] = []
    for i, test in enumerate(finite or []):
        if test is not None:
            e.line(f"if not {e.fn(test)}(x{i}):")
            e.line(f"    return int64({i + 1})")
    checks = e.lines[:]
    e.lines.clear()
    for s, k, slots in zip(steps, kernels, step_slots):
        ins = [None if not n else env[n] if n in env else e.const(consts[n], "init") for n in s["inputs"]]
        if slots is None:  # a view: the kernel binds fresh names
            outs = [e.fresh("v") if o else None for o in s["outputs"]]
            src = next((n for n in s["inputs"] if n), "")
            for o in s["outputs"]:
                root[o] = root.get(src, ("const", src))
        else:
            outs = [None if j is None else Expr(f"b{j}") for j in slots]
            root.update((o, ("slot", j)) for o, j in zip(s["outputs"], slots) if o)
        e.scope = re.sub(r"\W+", "_", s.get("name", s["op"]))[-20:].strip("_")
        e.node = s.get("name", s["op"])
        start = len(e.lines)
        e.comment(f"{s.get('name', s['op'])} ({s['op']})")
        k.emit(e, ins, outs)
        segments.append((e.lines[start:], [x or "" for x in outs]))
        for o, x in zip(s["outputs"], outs):
            if o:
                env[o] = x
    used = set(_NAME.findall("\n".join(e.lines)))
    e.consts = [(n, a) for n, a in e.consts if n in used]  # constants a kernel reads in its own form
    args, views, named = pack_constants(e)
    params = [f"x{i}" for i in range(len(inputs))] + [n for n, _ in args]
    params += [f"b{j}" for j in range(n_slots)] + [n for n, *_ in e.scratch]
    source = module_source(e.helpers + [function_source("run_plan", params, checks + views + e.lines, "int64(0)")],
                           model)
    module, path = load_module(source, e.functions)
    return Plan(source, path, module.run_plan, tuple(a for _, a in args), e.scratch, params, segments,
                e.functions, model, named, e.helpers, [root.get(o, ("const", o)) for o in outputs])


def pack_constants(e: Emitter) -> tuple[list[tuple[str, np.ndarray]], list[str], dict[str, np.ndarray]]:
    """The plan function's constant arguments: the constants of one dtype concatenated into one
    array (``c_pack_<dtype>``, each constant at an offset aligned to 64 bytes), which the
    function's first lines cut back into the named constants as literal slices. Numba unboxes
    every array argument on every call (about 90 ns each here): QuickNet-small's 70 constants
    cost 6 us per run as arguments. Returns the arguments (name, array), those first lines, and
    every constant by name as a view of its pack (for running the steps one by one)."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for n, a in e.consts:
        groups.setdefault(a.dtype.str, []).append((n, a))
    args: list[tuple[str, np.ndarray]] = []
    views: list[str] = []
    named: dict[str, np.ndarray] = {}
    for members in groups.values():
        if len(members) < 2 or any(a.ndim == 0 for _, a in members):
            args += members
            named.update(members)
            continue
        align = max(1, 64 // members[0][1].itemsize)
        offsets, end = [], 0
        for _, a in members:
            offsets.append(end)
            end += -(-max(a.size, 1) // align) * align
        pack = np.zeros(end, members[0][1].dtype)
        name = f"c_pack_{pack.dtype.name}"
        for (n, a), off in zip(members, offsets):
            pack[off:off + a.size] = a.reshape(-1)
            named[n] = pack[off:off + a.size].reshape(a.shape)
            cut = f"{name}[{off}:{off + a.size}]"  # a 1-D slice is C-contiguous already: no reshape to compile
            views.append(f"    {n} = {cut}" if a.ndim == 1 else f"    {n} = {cut}.reshape({e.lit(tuple(a.shape))})")
        args.append((name, pack))
    return args, views, named


_NAME = re.compile(r"[A-Za-z_]\w*")
_PARAM = re.compile(r"^(x\d+|b\d+|v\d+|c_\w+|w_\w+)$")  # names that come from outside a step
_ASSIGNED = re.compile(r"^\s*(\w+) = ", re.M)


def _outside_names(lines: list[str]) -> list[str]:
    """The names these lines of the plan read from outside them (buffers, inputs, constants,
    views an earlier step made), sorted: the parameters of a function of these lines."""
    text = "\n".join(lines)
    return sorted({n for n in _NAME.findall(text) if _PARAM.match(n)} - set(_ASSIGNED.findall(text)))


class Timed:
    """The plan's steps in one function that reads the clock (``runtime.clock``) before the
    first step and after every step: ``profile``'s timing. Inside one compiled function no
    Python runs between steps, so a step's time is its own code's, as in ``run_plan`` (its
    thread pool kept spinning, its data where the step before left it), not that plus the
    unboxing of its arguments from Python (``Steps``). Compiled on first use, cached as the
    plan is."""

    def __init__(self, plan: Plan):
        from runtime.clock import monotonic_ns

        body = ["    t_stamps[0] = monotonic_ns()"]
        for i, (lines, _) in enumerate(plan.steps):
            body += lines + [f"    t_stamps[{i + 1}] = monotonic_ns()"]
        self.params = _outside_names(body)
        source = module_source(plan.helpers + [function_source("run_timed", self.params + ["t_stamps"], body)], plan.model)
        module, _ = load_module(source, {**plan.functions, "monotonic_ns": monotonic_ns})
        self.function = module.run_timed

    def run(self, plan: Plan, feeds: list[np.ndarray], slots: list[np.ndarray], scratch: list[np.ndarray]) -> np.ndarray:
        """Run the plan once; the seconds of every step (float64 [steps])."""
        values = named_values(plan, feeds, slots, scratch)
        stamps = np.zeros(len(plan.steps) + 1, np.int64)
        self.function(*[values[p] for p in self.params], stamps)
        return np.diff(stamps) * 1e-9


def scratch_arrays(plan: Plan) -> list[np.ndarray]:
    """A workspace's own copy of the plan's scratch arrays."""
    return [np.zeros(shape, dtype) if zeroed else np.empty(shape, dtype) for _, shape, dtype, zeroed in plan.scratch]


def named_values(plan: Plan, feeds: list[np.ndarray], slots: list[np.ndarray], scratch: list[np.ndarray]) -> dict:
    """Every array a step of the plan may read, by its name in the emitted code."""
    values = dict(zip(plan.params, [*feeds, *plan.consts, *slots, *scratch]))
    values.update(plan.named)
    return values


def call(plan: Plan, feeds: list[np.ndarray], slots: list[np.ndarray], scratch: list[np.ndarray]) -> int:
    """Run the plan function: 0, or i + 1 when input i holds NaN or Inf (nothing computed)."""
    return plan.function(*feeds, *plan.consts, *slots, *scratch)


def output_arrays(plan: Plan, shapes: list[tuple[int, ...]], feeds: list[np.ndarray], slots: list[np.ndarray],
                  consts: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The graph outputs (of ``shapes``) where the plan function leaves them: views of the
    workspace's buffers, of the inputs or of constants (not copies)."""
    out = []
    for (kind, where), shape in zip(plan.outputs, shapes):
        a = slots[where] if kind == "slot" else feeds[where] if kind == "input" else consts[where]
        out.append(a.reshape(shape))
    return out


class Steps:
    """The plan's steps as one function each (the same emitted code as ``run_plan``, cut at the
    step boundaries), called one by one from Python: for timing each step (``profile``) and for
    reading intermediate values (``run_with_values``)."""

    def __init__(self, plan: Plan):
        self.calls: list[tuple[Any, list[str], list[str]]] = []
        sources, specs = [], []
        for i, (lines, outs) in enumerate(plan.steps):
            params = _outside_names(lines)
            ret = "(" + "".join(f"{o}, " for o in outs if o) + ")"
            sources.append(function_source(f"step_{i}", params, lines, ret))
            specs.append((params, outs))
        module, _ = load_module(module_source(plan.helpers + sources, plan.model), plan.functions)
        self.calls = [(getattr(module, f"step_{i}"), p, o) for i, (p, o) in enumerate(specs)]

    def run(self, plan: Plan, feeds: list[np.ndarray], slots: list[np.ndarray], scratch: list[np.ndarray], after=None,
            before=None):
        """Run every step; ``before(i)`` is called just before step i (its arguments gathered),
        ``after(i, outputs)`` just after, with its output arrays (None for absent ones)."""
        values = named_values(plan, feeds, slots, scratch)
        for i, (fn, params, outs) in enumerate(self.calls):
            args = [values[p] for p in params]
            if before is not None:
                before(i)
            res = iter(fn(*args))
            arrays = [next(res) if o else None for o in outs]
            for o, a in zip(outs, arrays):
                if o:
                    values[o] = a
            if after is not None:
                after(i, arrays)
