"""Helpers for the binary kernel tests: build a Step, run a kernel, make random binary data."""

from __future__ import annotations

import numpy as np

from bnnc import ops
from runtime import InferenceSession
from runtime.artifact import write_artifact
from runtime.bitpack import pack_activation, unpack_activation
from runtime.kernels import KERNELS, Step

GARBAGE = {"uint64": np.uint64(0xA5A5A5A5A5A5A5A5), "float32": np.float32(np.nan)}


def run_step(op: str, attrs: dict, ins: list, consts: set[int], out_specs=None, n_outputs: int = 1):
    """Build kernel ``op`` from a Step (inputs ``ins``; those at indices ``consts`` are constants
    of the artifact) and run it once on garbage-filled output buffers. ``out_specs`` default to
    bnnc.ops.output_shapes, so the shape helper and the kernel's own check must agree."""
    if out_specs is None:
        out_specs = ops.output_shapes(op, attrs, ins[0].shape, n_outputs)
    step = Step(
        name="node", op=op, attrs=attrs,
        in_shapes=[None if a is None else tuple(a.shape) for a in ins],
        in_dtypes=[None if a is None else str(a.dtype) for a in ins],
        out_shapes=[tuple(s) for s, _ in out_specs], out_dtypes=[d for _, d in out_specs],
        consts=[a if i in consts else None for i, a in enumerate(ins)],
    )
    kernel = KERNELS[op](step)
    outs = [np.full(s, GARBAGE[d], dtype=d) for s, d in out_specs]
    kernel.run(list(ins), outs, kernel.make_scratch())
    return outs


def one_step(op, attrs, ins, outs):
    """(manifest, tensors) of an artifact of one bnnc step: ``ins`` are (array, constant?)
    pairs (None for an absent optional input), ``outs`` (shape, dtype) pairs."""
    values, tensors, names, inputs = {}, {}, [], []
    for i, (a, const) in enumerate(ins):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if const:
            tensors[name] = a
        else:
            values[name] = {"shape": list(a.shape), "dtype": str(a.dtype)}
            inputs.append({"name": name, **values[name]})
    out_names = [f"out{i}" for i in range(len(outs))]
    for n, (shape, dtype) in zip(out_names, outs, strict=True):
        values[n] = {"shape": list(shape), "dtype": dtype}
    plan = [{"name": "the_step", "op": op, "inputs": names, "outputs": out_names, "attrs": attrs}]
    outputs = [{"name": n, **values[n]} for n in out_names]
    return {"format": "bnnc-artifact", "producer": "test", "graph_name": "m", "inputs": inputs, "outputs": outputs,
            "dynamic_batch": False, "values": values, "plan": plan, "metadata": {}}, tensors


def run_emitted(op: str, attrs: dict, ins: list, consts: set[int], path, threads: int = 1, n_outputs: int = 1,
                source: list | None = None):
    """``run_step`` through the emitted plan function of a one-step artifact written to
    ``path`` (the code the step writes into a plan, not its kernel's ``run``); the plan's
    source is appended to ``source`` when given."""
    out_specs = ops.output_shapes(op, attrs, ins[0].shape, n_outputs)
    manifest, tensors = one_step(op, attrs, [(a, i in consts) for i, a in enumerate(ins)], out_specs)
    write_artifact(str(path), manifest, tensors)
    sess = InferenceSession(str(path), threads=threads, plan="emitted")
    assert sess._plan is not None
    if source is not None:
        source.append(sess._plan.source)
    feeds = {f"in{i}": a for i, a in enumerate(ins) if a is not None and i not in consts}
    return sess.run(None, feeds)


def signs(rng: np.random.Generator, shape, zeros: bool = False) -> np.ndarray:
    """Random {-1, +1} int8 values; about a third zeros when ``zeros``."""
    v = rng.choice(np.array([-1, 1], np.int8), size=shape)
    if zeros:
        v[rng.random(shape) < 0.3] = 0
    return v


def packed(x: np.ndarray, with_mask: bool):
    """(bits, mask or None) of logical {-1, 0, +1} values."""
    return pack_activation(x, with_mask=with_mask)


def unpacked(bits: np.ndarray, channels: int, mask: np.ndarray | None = None) -> np.ndarray:
    return unpack_activation(bits, channels, mask)


def random_rules(rng: np.random.Generator, s: np.ndarray, with_zero: bool) -> np.ndarray:
    """One rule row per output channel (axis 1 of ``s``) whose thresholds fall among the channel's
    actual s values: plain thresholds, flipped ones (v_below = +1, v_above = -1), constant
    outputs and, with ``with_zero``, ties (v_mid = 0) and constant 0."""
    c = s.shape[1]
    per_c = np.moveaxis(s, 1, 0).reshape(c, -1)
    kinds = ["up", "down", "const+", "const-", "wide"] + (["tie", "const0", "tie_flip"] if with_zero else [])
    rows = []
    for ch in range(c):
        t = int(rng.choice(per_c[ch]))
        kind = kinds[ch % len(kinds)] if ch < len(kinds) else rng.choice(kinds)
        if kind == "up":
            rows.append((t, t - 1, -1, 1, 1))
        elif kind == "down":
            rows.append((t, t - 1, 1, -1, -1))
        elif kind == "const+":
            rows.append((-(1 << 20), 1 << 20, -1, 1, -1))
        elif kind == "const-":
            rows.append((1 << 20, 1 << 20, -1, 1, 1))
        elif kind == "wide":
            rows.append((t - 2, t + 2, 1, -1, 1))
        elif kind == "tie":
            rows.append((t, t, -1, 0, 1))
        elif kind == "tie_flip":
            rows.append((t - 1, t + 1, 1, 0, -1))
        else:
            rows.append((-(1 << 20), 1 << 20, 1, 0, 1))
    return np.array(rows, np.int32)
