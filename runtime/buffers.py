"""Buffer planning: which memory every computed value of a plan is written into.

Every value that is not a constant, a graph input or a view gets a buffer slot. Walking the
steps in order, a value's slot is freed after its last reader (a view's readers count for the
value that owns its memory) and handed to the next value of the same shape and dtype; graph
outputs live to the end, so they keep their own slots (the session copies them out). A step
whose kernel reads each element of one input before writing the same element of its first
output, and nothing else of that input (``overwrites``), gives that output the input's slot when
the input dies at the step and has the output's shape and dtype: the buffer was just written,
so it is still in the cache, where a free slot was last touched longer ago. The slots are only
shapes and dtypes: each workspace of a session makes its own arrays from them.
"""

from __future__ import annotations

Slot = tuple[tuple[int, ...], str]  # (shape, dtype) of one buffer


def plan_buffers(steps: list[dict], views: list[bool], values: dict[str, Slot], outputs: list[str],
                 overwrites: list[int | None] | None = None) -> tuple[list[Slot], list[list[int | None] | None]]:
    """(slots, step_slots): the buffers and, per step, its outputs' slot numbers (None for an
    absent optional output; None in place of the list for a view step, which writes nothing).
    ``views[i]`` says whether step i is a view of its first input; ``values`` gives every
    computed value's (shape, dtype); ``overwrites[i]`` the index of the input whose slot step
    i's first output may take (module docstring), or None."""
    root: dict[str, str] = {}  # view value -> the value that owns its memory
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for n in s["inputs"]:
            if n:
                last_use[root.get(n, n)] = i
        if views[i]:
            src = next((n for n in s["inputs"] if n), "")
            for o in s["outputs"]:
                root[o] = root.get(src, src)
    for o in outputs:
        last_use[root.get(o, o)] = len(steps)
    dies_at: dict[int, list[str]] = {}
    for i, s in enumerate(steps):
        if not views[i]:
            for o in s["outputs"]:
                if o:
                    dies_at.setdefault(last_use.get(o, i), []).append(o)
    free: dict[Slot, list[int]] = {}
    owned: dict[str, int] = {}
    handed: set[str] = set()  # values whose slot an output took over at their last step
    slots: list[Slot] = []
    step_slots: list[list[int | None] | None] = []
    for i, s in enumerate(steps):
        if views[i]:
            step_slots.append(None)
        else:
            mine: list[int | None] = []
            over = overwrites[i] if overwrites is not None else None
            src = s["inputs"][over] if over is not None and over < len(s["inputs"]) else ""
            src = root.get(src, src)
            for j, o in enumerate(s["outputs"]):
                if not o:
                    mine.append(None)
                    continue
                pool = free.get(values[o])
                if j == 0 and src in owned and last_use.get(src) == i and slots[owned[src]] == values[o]:
                    owned[o] = owned[src]
                    handed.add(src)
                elif pool:
                    owned[o] = pool.pop()
                else:
                    owned[o] = len(slots)
                    slots.append(values[o])
                mine.append(owned[o])
            step_slots.append(mine)
        for o in dies_at.get(i, ()):
            if o not in handed:
                free.setdefault(slots[owned[o]], []).append(owned[o])
    return slots, step_slots
