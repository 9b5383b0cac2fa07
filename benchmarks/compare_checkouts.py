"""Check: two bnnc checkouts compile every corpus model to artifacts that compute the same outputs.

For each model of ``--corpus`` (``model.onnx`` + ``input.npy``), each checkout compiles it with
its own compiler and runs the artifact with its own runtime on ``input.npy``, in a subprocess
started in the checkout (``python -c``, so the checkout's ``bnnc`` and ``runtime`` are the ones
imported). We print, per model, the largest absolute difference between the two checkouts'
outputs, each one's largest difference from ``expected.npy`` and each one's compile time (one
compile, in a fresh process: read it as a rough figure).

    python benchmarks/compare_checkouts.py --base /work/main [--base-python /work/main/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
RUN = """
import sys, time, numpy as np, bnnc
from runtime import InferenceSession
onnx_path, out_bnn, x_path, out_npz = sys.argv[1:5]
t0 = time.perf_counter()
bnnc.compile(onnx_path, out_bnn)
print(time.perf_counter() - t0)
sess = InferenceSession(out_bnn, threads=1)
x = np.load(x_path)
outs = sess.run(None, {sess.get_inputs()[0].name: x})
np.savez(out_npz, *outs)
"""


def run(checkout: Path, python: str, model: Path, out_dir: Path) -> tuple[list[np.ndarray], float]:
    """The artifact's outputs on input.npy, and the compile's seconds."""
    out_npz = out_dir / f"{model.name}.npz"
    cmd = [python, "-c", RUN, str(model / "model.onnx"), str(out_dir / f"{model.name}.bnn"),
           str(model / "input.npy"), str(out_npz)]
    proc = subprocess.run(cmd, cwd=checkout, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(checkout)})
    with np.load(out_npz) as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))], float(proc.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the other checkout")
    ap.add_argument("--base-python", help="its interpreter (default: BASE/.venv/bin/python)")
    ap.add_argument("--corpus", default=str(HERE.parent / "shared" / "corpus"))
    args = ap.parse_args()
    base = Path(args.base).resolve()
    base_python = args.base_python or str(base / ".venv" / "bin" / "python")
    print(f"{'model':30} {'max |ours - base|':>18} {'ours vs expected':>17} {'base vs expected':>17}"
          f" {'compile ours s':>15} {'base s':>7}")
    with tempfile.TemporaryDirectory() as d:
        for model in sorted(p for p in Path(args.corpus).iterdir() if (p / "model.onnx").exists()):
            dirs = [Path(d) / "ours", Path(d) / "base"]
            for x in dirs:
                x.mkdir(exist_ok=True)
            ours, t_ours = run(HERE, sys.executable, model, dirs[0])
            theirs, t_base = run(base, base_python, model, dirs[1])
            expected = np.load(model / "expected.npy")
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(ours, theirs, strict=True))
            e_ours = float(np.max(np.abs(ours[0].astype(np.float64) - expected)))
            e_base = float(np.max(np.abs(theirs[0].astype(np.float64) - expected)))
            print(f"{model.name:30} {diff:18.3g} {e_ours:17.3g} {e_base:17.3g} {t_ours:15.2f} {t_base:7.2f}")


if __name__ == "__main__":
    main()
