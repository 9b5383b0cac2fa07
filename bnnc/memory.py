"""Peak memory of bnnc and of onnxruntime on one model, each engine in a fresh process.

What is measured (Linux, from ``/proc/self/status``): a child process imports numpy and one
engine (bnnc's runtime alone, or onnxruntime alone) and reads its resident set size: that is
the *baseline*, the engine's code and libraries. It then opens the model, runs it ``WARMUP``
times, resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and runs it
``runs`` more times. Reported, above the baseline:

- ``peak_mb``: the high-water mark of those steady-state runs: the model's weights, the plan's
  buffers or onnxruntime's arena, the compiled kernels, and whatever the allocator kept from
  opening the session. This is what the deployed model costs.
- ``setup_peak_mb``: the high-water mark while opening the session and warming up (for bnnc this
  includes loading or compiling the Numba kernels; for onnxruntime its graph optimizations).

Resident memory counts pages actually touched, in any allocator (numpy's, Numba's, onnxruntime's
arena), which tracemalloc would not see. Shared libraries loaded at import time are in the
baseline of their engine, so the two engines' figures are comparable: memory each needs for
this model beyond being imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx

WARMUP = 3

_CHILD = r"""
import json, sys
import numpy as np

def status():
    with open("/proc/self/status") as f:
        d = dict(line.split(":", 1) for line in f if ":" in line)
    return int(d["VmRSS"].split()[0]), int(d["VmHWM"].split()[0])

engine, model, inputs, threads, runs, warmup = sys.argv[1:7]
threads, runs, warmup = int(threads), int(runs), int(warmup)
feeds = dict(np.load(inputs))
if engine == "bnnc":
    from runtime import InferenceSession
    base = status()[0]
    sess = InferenceSession(model, threads=threads)
else:
    import onnxruntime as ort
    base = status()[0]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
for _ in range(warmup):
    sess.run(None, feeds)
loaded, setup_peak = status()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
for _ in range(runs):
    sess.run(None, feeds)
print(json.dumps({"base_kb": base, "loaded_kb": loaded, "setup_peak_kb": setup_peak, "peak_kb": status()[1]}))
"""


def _probe(engine: str, model: str, inputs: str, threads: int, runs: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, engine, model, inputs, str(threads), str(runs), str(WARMUP)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {"error": f"the {engine} process failed: {last}"}
    kb = json.loads(proc.stdout.strip().splitlines()[-1])
    base = kb["base_kb"]
    return {"baseline_mb": base / 1024, "peak_mb": (kb["peak_kb"] - base) / 1024,
            "setup_peak_mb": (kb["setup_peak_kb"] - base) / 1024}


def peak_memory(artifact: str, reference: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1,
                runs: int = 10) -> dict:
    """Peak resident memory of bnnc (``artifact``) and onnxruntime (``reference``) on ``feeds``,
    in MB above each engine's baseline (see the module docstring)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return {"error": "peak memory is measured from /proc (Linux only)"}
    with tempfile.TemporaryDirectory() as d:
        inputs, model = os.path.join(d, "inputs.npz"), os.path.join(d, "reference.onnx")
        np.savez(inputs, **feeds)
        onnx.save(reference, model)
        return {"bnnc": _probe("bnnc", artifact, inputs, threads, runs),
                "onnxruntime": _probe("onnxruntime", model, inputs, threads, runs)}


def format_memory(m: dict) -> list[str]:
    """Lines for ``bnnc bench``: each engine's peak and setup peak above its baseline."""
    if "error" in m:
        return [f"  memory       unavailable: {m['error']}"]
    lines = []
    for k in ("onnxruntime", "bnnc"):
        r = m[k]
        if "error" in r:
            lines.append(f"  {k:<12} memory unavailable: {r['error']}")
            continue
        lines.append(f"  {k:<12} peak {r['peak_mb']:8.1f} MB   setup peak {r['setup_peak_mb']:8.1f} MB"
                     f"   (above {r['baseline_mb']:.0f} MB after import)")
    lines.append("  (resident memory in a fresh process per engine: peak over steady-state runs, and while opening"
                 " the model and warming up, above the process's size right after importing the engine)")
    return lines
