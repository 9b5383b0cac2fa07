"""Run a deploy folder's model once and save every value it can: ``aarch64_check.py``'s probe.

    python aarch64_probe.py DEPLOY_DIR INPUT.npy OUT.npz [THREADS]

Runs the same way on the host and under AArch64 emulation. The compiler's packages are blocked
before anything is imported, so a deploy folder that reached for onnx, onnxruntime, click, bnnc or
passes fails here. OUT.npz holds ``out/<name>`` for every graph output and, when the session can
hand out intermediate values (``run_with_values``), ``val/<name>`` for every value of the plan, so
the binary layers are compared bit by bit, not only through the outputs.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time

BLOCKED = ("onnx", "onnxruntime", "onnx_ir", "click", "bnnc", "passes")


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"the deploy folder imported '{name}', which must not be on the device")
        return None


def main() -> int:
    folder, input_path, out_path = sys.argv[1:4]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    sys.meta_path.insert(0, _Block())
    sys.path.insert(0, os.path.abspath(folder))
    import numpy as np

    import runtime
    from runtime import InferenceSession

    where = os.path.dirname(os.path.abspath(runtime.__file__))
    if where != os.path.join(os.path.abspath(folder), "runtime"):
        raise SystemExit(f"imported the runtime from {where}, not from the deploy folder")
    (artifact,) = [f for f in os.listdir(folder) if f.endswith(".bnn")]
    x = np.load(input_path)
    t0 = time.perf_counter()
    sess = InferenceSession(os.path.join(folder, artifact), threads=threads)
    feeds = {sess.get_inputs()[0].name: x}
    outs = sess.run(None, feeds)
    first = time.perf_counter() - t0
    saved = {f"out/{o.name}": v for o, v in zip(sess.get_outputs(), outs)}
    values = getattr(sess, "manifest", {}).get("values", {})
    if hasattr(sess, "run_with_values") and values:
        try:
            saved.update({f"val/{k}": v for k, v in sess.run_with_values(feeds, list(values)).items()})
        except Exception as e:  # an older or newer session API: the outputs still get compared
            print(f"probe: intermediate values not available ({type(e).__name__}: {e})")
    t1 = time.perf_counter()
    sess.run(None, feeds)
    again = time.perf_counter() - t1
    np.savez(out_path, **saved)
    print(f"probe: first run {first:.2f} s, next run {again * 1e3:.2f} ms, {len(saved)} arrays saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
