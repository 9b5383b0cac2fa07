"""The plan function's constants travel as one array per dtype (runtime/program.py,
``pack_constants``) and are cut back into the named constants by its first lines."""

from __future__ import annotations

import numpy as np

from runtime.codegen import Emitter, function_source, load_module, module_source
from runtime.program import pack_constants


def test_packed_constants_come_back_exactly():
    rng = np.random.default_rng(5)
    e = Emitter(1)
    arrays = [rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(17).astype(np.float32),
              rng.standard_normal((2, 1, 4)).astype(np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
              np.array(7, np.int64), rng.integers(0, 2**63, (4,), dtype=np.uint64), np.zeros((0, 3), np.float32)]
    names = [e.const(a) for a in arrays]
    e.line("pass")
    args, views, named = pack_constants(e)
    by_name = dict(args)
    assert "c_pack_float32" in by_name  # four float32 constants: one argument
    assert [n for n, _ in args] == ["c_pack_float32", "c_pack_int64", names[5]]  # a lone uint64 stays apart
    for n, a in zip(names, arrays, strict=True):
        a = np.ascontiguousarray(a)  # as the emitter keeps it (a 0-d constant becomes shape (1,))
        np.testing.assert_array_equal(named[n], a)
        assert named[n].shape == a.shape and named[n].dtype == a.dtype
    for line in views:  # every constant starts at a 64-byte boundary of its pack
        pack, rest = line.split(" = ")[1].split("[", 1)
        assert int(rest.split(":")[0]) * by_name[pack].itemsize % 64 == 0, line
    ret = "(" + "".join(f"{n}, " for n in names if n in {v.split(" = ")[0].strip() for v in views}) + ")"
    params = [n for n, _ in args]
    src = module_source([function_source("run_plan", params, views, ret)], "test_pack")
    module, _ = load_module(src, {})
    for n, got in zip([n for n in names if ret.count(n + ",")], module.run_plan(*[a for _, a in args]), strict=True):
        np.testing.assert_array_equal(got, named[n])
