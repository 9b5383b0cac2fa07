"""``bnnc deploy``: one folder to copy to a Raspberry Pi (or any AArch64 or x86-64 Linux board).

    DIR/<model>.bnn       the artifact (compiled from the .onnx, or the given .bnn, verified)
    DIR/runtime/          the runtime package, copied from the one this bnnc runs, so it always
                          matches the artifact format; numpy and numba are all it imports
    DIR/run.py            example: load, run an .npy or random input, print outputs, top classes,
                          latency; ``--warmup`` compiles and caches the kernels ahead of time
    DIR/requirements.txt  numpy and numba, pinned to versions known to work on Raspberry Pi OS
                          bookworm (AArch64, Python 3.11): the ones ``make aarch64-check`` runs
    DIR/README.md         the steps on a fresh Pi

The folder is built beside DIR under a temporary name and renamed into place when complete: a
failed deploy leaves an existing DIR as it was. An existing DIR is replaced only when it is an
earlier deploy folder (it holds the marker file MARKER); any other existing path is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import runtime
from bnnc.deploy_readme import readme
from runtime.artifact import read_artifact
from runtime.errors import BnncError

# Versions run by `make aarch64-check` under AArch64 emulation with Debian bookworm's Python 3.11
# (Raspberry Pi OS bookworm's userland) and by the test suite on x86-64; llvmlite follows numba.
REQUIREMENTS = ("numpy==2.4.6", "numba==0.68.1")
MARKER = ".bnnc-deploy.json"
RUN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_run.py")


@dataclass
class DeployResult:
    path: str
    artifact: str  # file name inside path
    files: list[str]  # every file written, relative to path


def deploy(model: str, out_dir: str, input_shapes: Sequence[str] | None = None) -> DeployResult:
    """Build the deploy folder for ``model`` (.onnx or .bnn) at ``out_dir`` (see module docstring)."""
    out_dir = os.path.abspath(out_dir)
    _check_target(out_dir)
    stem, ext = os.path.splitext(os.path.basename(model))
    if ext.lower() not in (".onnx", ".bnn"):
        raise BnncError(f"'{model}' is neither an .onnx model nor a .bnn artifact")
    if not os.path.isfile(model):
        raise BnncError(f"model file not found: '{model}'")
    parent = os.path.dirname(out_dir)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the folder is meant to be shared and copied
        artifact = stem + ".bnn"
        manifest = _place_artifact(model, ext.lower(), os.path.join(tmp, artifact), input_shapes)
        _copy_runtime(os.path.join(tmp, "runtime"))
        shutil.copyfile(RUN_SCRIPT, os.path.join(tmp, "run.py"))
        _write(tmp, "requirements.txt", "".join(r + "\n" for r in REQUIREMENTS))
        _write(tmp, "README.md", readme(os.path.basename(out_dir), artifact, manifest, REQUIREMENTS))
        _write(tmp, MARKER, json.dumps({"model": os.path.basename(model), "artifact": artifact,
                                        "producer": manifest.get("producer")}) + "\n")
        files = sorted(os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DeployResult(out_dir, artifact, files)


def _check_target(out_dir: str) -> None:
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise BnncError(f"output directory's parent '{parent}' does not exist")
    if os.path.lexists(out_dir) and not os.path.isfile(os.path.join(out_dir, MARKER)):
        raise BnncError(f"'{out_dir}' exists and is not a bnnc deploy folder; choose a new path or remove it")


def _place_artifact(model: str, ext: str, dest: str, input_shapes: Sequence[str] | None) -> dict:
    """Compile or copy the model to ``dest``; return its manifest, read back from ``dest``."""
    if ext == ".onnx":
        from bnnc import compile_model

        compile_model(model, dest, None, list(input_shapes or []))
    else:
        if input_shapes:
            raise BnncError("--input-shape applies to .onnx models only; a .bnn artifact has fixed shapes")
        shutil.copyfile(model, dest)
    os.chmod(dest, 0o644)  # the compiler writes it private (a temp file renamed into place)
    manifest, _ = read_artifact(dest)  # checks the copy as the device will: version, checksums
    return manifest


def _copy_runtime(dest: str) -> None:
    src = os.path.dirname(os.path.abspath(runtime.__file__))
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def _write(directory: str, name: str, text: str) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        f.write(text)


def _swap_into_place(tmp: str, out_dir: str) -> None:
    """Rename ``tmp`` to ``out_dir``; an earlier deploy there is moved aside first and removed
    only once the new folder is in place (put back if the rename fails)."""
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
