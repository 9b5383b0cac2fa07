"""Buffer planning (runtime/buffers.py) on hand-written plans: a dead value's slot is reused by
the next value of its shape and dtype, a view keeps the value it reads alive, graph outputs
keep their own slots, and no two values alive at once share a slot."""

from __future__ import annotations

from runtime.buffers import plan_buffers

F = ((4, 8), "float32")
G = ((2, 16), "float32")


def step(ins, outs):
    return {"inputs": ins, "outputs": outs}


def alive_at_once_share_nothing(steps, views, outputs, step_slots):
    """Check that a value's slot is not written again while the value may still be read."""
    owner = {}
    written = {}  # slot -> value now in it
    last = {}
    for i, s in enumerate(steps):
        for n in s["inputs"]:
            last[owner.get(n, n)] = i
        if views[i]:
            owner[s["outputs"][0]] = owner.get(s["inputs"][0], s["inputs"][0])
    for o in outputs:
        last[owner.get(o, o)] = len(steps)
    for i, (s, slots) in enumerate(zip(steps, step_slots)):
        for o, j in zip(s["outputs"], slots or []):
            if j is None:
                continue
            prev = written.get(j)
            assert prev is None or last.get(prev, -1) <= i, (o, prev, j)
            written[j] = o


def test_a_dead_value_gives_its_slot_to_the_next_of_its_kind():
    steps = [step(["x"], ["a"]), step(["a"], ["b"]), step(["b"], ["c"]), step(["c"], ["y"])]
    views = [False] * 4
    values = {"a": F, "b": F, "c": F, "y": F}
    slots, step_slots = plan_buffers(steps, views, values, ["y"])
    assert step_slots[2][0] == step_slots[0][0]  # a died at step 1: c takes its slot
    assert step_slots[3][0] == step_slots[1][0]  # b died at step 2: the output y takes its slot
    assert len(slots) == 2
    alive_at_once_share_nothing(steps, views, ["y"], step_slots)


def test_shapes_and_dtypes_keep_their_own_slots():
    steps = [step(["x"], ["a"]), step(["a"], ["b"]), step(["b"], ["c"])]
    values = {"a": F, "b": G, "c": ((4, 8), "float64")}
    slots, step_slots = plan_buffers(steps, [False] * 3, values, ["c"])
    assert slots == [F, G, ((4, 8), "float64")]


def test_a_view_keeps_its_source_alive():
    steps = [step(["x"], ["a"]), step(["a"], ["v"]), step(["x"], ["b"]), step(["v", "b"], ["y"])]
    views = [False, True, False, False]
    values = {"a": F, "b": F, "y": F}
    slots, step_slots = plan_buffers(steps, views, values, ["y"])
    assert step_slots[1] is None
    assert step_slots[2][0] != step_slots[0][0]  # a is read through v at step 3
    alive_at_once_share_nothing(steps, views, ["y"], step_slots)


def test_outputs_and_optional_outputs():
    steps = [step(["x"], ["a", ""]), step(["a"], ["b"]), step(["b"], ["c"])]
    values = {"a": F, "b": F, "c": F}
    slots, step_slots = plan_buffers(steps, [False] * 3, values, ["a", "c"])
    assert step_slots[0][1] is None
    assert len({step_slots[0][0], step_slots[1][0], step_slots[2][0]}) == 3  # a lives to the end
    alive_at_once_share_nothing(steps, [False] * 3, ["a", "c"], step_slots)


def test_an_output_takes_the_slot_of_an_input_dying_at_its_step():
    """``overwrites``: step 2's output may take its input 1's slot. It does when that input dies
    there (and the slot then serves only the output until the output dies); not when the input is
    read later, directly or through a view, has another shape, or is a graph input."""
    base = [step(["x"], ["a"]), step(["x"], ["r"]), step(["a", "r"], ["b"]), step(["b"], ["c"]), step(["x"], ["d"]),
            step(["c", "d"], ["y"])]
    values = {"a": F, "r": F, "b": F, "c": F, "d": F, "y": F}
    over = [None, None, 1, None, None, None]
    slots, step_slots = plan_buffers(base, [False] * 6, values, ["y"], over)
    assert step_slots[2][0] == step_slots[1][0]  # b written over r
    assert step_slots[3][0] == step_slots[0][0]  # a died at step 2: c takes its slot, not r's (b's)
    assert step_slots[4][0] == step_slots[2][0]  # b died at step 3 (and r's slot with it, once): d takes it
    alive_at_once_share_nothing(base, [False] * 6, ["y"], step_slots)
    _, plain = plan_buffers(base, [False] * 6, values, ["y"])
    assert plain[2][0] != plain[1][0]  # without overwrites: a slot of its own

    later = base[:5] + [step(["c", "d", "r"], ["y"])]  # r read again at the end
    _, step_slots = plan_buffers(later, [False] * 6, values, ["y"], over)
    assert step_slots[2][0] != step_slots[1][0]
    alive_at_once_share_nothing(later, [False] * 6, ["y"], step_slots)

    viewed = [step(["x"], ["a"]), step(["x"], ["r"]), step(["r"], ["v"]), step(["a", "r"], ["b"]), step(["b", "v"], ["y"])]
    views = [False, False, True, False, False]
    _, step_slots = plan_buffers(viewed, views, {"a": F, "r": F, "b": F, "y": F}, ["y"], [None, None, None, 1, None])
    assert step_slots[3][0] != step_slots[1][0]  # r's view v is read after step 3
    alive_at_once_share_nothing(viewed, views, ["y"], step_slots)

    _, step_slots = plan_buffers(base, [False] * 6, dict(values, r=G), ["y"], over)
    assert step_slots[2][0] != step_slots[1][0]  # r of another shape
    _, step_slots = plan_buffers([step(["x", "x"], ["b"]), step(["b"], ["y"])], [False] * 2, {"b": F, "y": F}, ["y"], [1, None])
    assert step_slots[0] == [0]  # a graph input has no slot to take
