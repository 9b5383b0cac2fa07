"""The README.md of a ``bnnc deploy`` folder: what is in it and the exact steps on a fresh Pi."""

from __future__ import annotations

from collections.abc import Sequence


def _tensors(items: list) -> str:
    rows = []
    for t in items:
        if isinstance(t, dict):
            rows.append(f"`{t.get('name')}` {list(t.get('shape', []))} {t.get('dtype')}")
    return ", ".join(rows) or "(none listed)"


def readme(folder: str, artifact: str, manifest: dict, requirements: Sequence[str]) -> str:
    """The README of deploy folder ``folder`` (its name) for ``artifact`` (whose manifest gives
    the inputs and outputs)."""
    inputs, outputs = manifest.get("inputs", []), manifest.get("outputs", [])
    first = inputs[0].get("name", "input") if inputs and isinstance(inputs[0], dict) else "input"
    batch = " The first dimension is a batch: any multiple of it is accepted." if manifest.get("dynamic_batch") else ""
    return _TEMPLATE.format(
        folder=folder, artifact=artifact, inputs=_tensors(inputs), outputs=_tensors(outputs), batch=batch,
        first=first, requirements=", ".join(f"`{r}`" for r in requirements),
    )


_TEMPLATE = """\
# {artifact}: a binarized network for the Raspberry Pi

This folder runs `{artifact}` with bnnc's standalone runtime. On the device it needs Python 3
with numpy and numba, nothing else: no ONNX, no onnxruntime, no PyTorch, no bnnc compiler.

- inputs: {inputs}.{batch}
- outputs: {outputs}

| file | what it is |
|---|---|
| `{artifact}` | the compiled model (data only: weights, bit-packed layers, the plan of kernel calls) |
| `runtime/` | the runtime (Python package `runtime`, imports numpy and numba only) |
| `run.py` | example: runs the model, prints outputs, top classes and latency |
| `requirements.txt` | {requirements} (numba brings llvmlite) |

## On a fresh Raspberry Pi

For a Raspberry Pi 4 or 5 (or Zero 2 W, 3) with **Raspberry Pi OS (64-bit), bookworm**. Check that
the system is 64-bit: `uname -m` must print `aarch64` (numba has no wheels for the 32-bit
`armv7l` system). Other AArch64 or x86-64 Linux machines with Python 3.11 to 3.13 work the same way.

1. Copy this folder to the Pi, from the computer that made it (USER and the host name are the
   ones chosen in Raspberry Pi Imager; a USB stick works too):

       scp -r {folder} USER@raspberrypi.local:~/

2. On the Pi, make a virtual environment and install numpy and numba (prebuilt wheels, about
   80 MB to download, nothing is compiled; Raspberry Pi OS refuses `pip install` outside a venv):

       sudo apt update && sudo apt install -y python3-venv
       cd ~/{folder}
       python3 -m venv .venv
       .venv/bin/pip install -r requirements.txt

3. First run. It compiles the kernels for this CPU, once, and says so on stderr:

       .venv/bin/python run.py

   prints `bnnc: compiling kernels for this CPU, first run only (cached in ...) ...` and a line per
   compiled function. On a Pi this takes several times longer than on a desktop: from well under
   a minute for a small MLP to several minutes for a ResNet-size network (an estimate; the
   compiled code is what the AArch64 check verifies, not the Pi's speed). The machine code goes
   to `~/.cache/bnnc/kernels-<hash of the runtime's sources>/` (set `NUMBA_CACHE_DIR` to put it
   elsewhere); the runtime folder itself may be read-only.

4. Later runs load the kernels from that cache in seconds and print no compile message:

       .venv/bin/python run.py --input x.npy          # x.npy: a numpy array of the input's shape
       .venv/bin/python run.py --repeat 100 --save out.npz

   The cache is per user and per runtime version: another user, or a new `runtime/`, compiles
   once more.

5. Threads. By default the kernels use all cores (4 on a Pi 4 or 5). Choose with
   `--threads N` (or `threads=N` in your code). One thread is best when several processes share
   the Pi or for the smallest models; measure with `run.py --threads 1` against `--threads 4`.

6. Warm the cache ahead of time (in an image build, at boot, or right after installing), so the
   application's first inference is already fast. Run it as the user that runs the application:

       .venv/bin/python run.py --warmup
       .venv/bin/python -m runtime.warmup {artifact} --threads 4     # the same, as a module

   Without `--threads` both the one-thread and the all-cores kernels are compiled.

## In your own program

Keep `runtime/` importable (run from this folder or copy `runtime/` next to your program):

```python
import numpy as np
from runtime import InferenceSession

sess = InferenceSession("{artifact}", threads=4)
x = np.load("x.npy")                       # float32, the input's shape
outputs = sess.run(None, {{"{first}": x}})   # a list, in get_outputs() order
```

The API is onnxruntime's: `get_inputs()`, `get_outputs()`, `run(names or None, feeds)`. A wrong
input name, shape or dtype, or a damaged `.bnn` file, raises `runtime.BnncError` with a one-line
message. `BNNC_QUIET=1` silences the compile message.
"""
