"""Deploy a corpus model, run it under AArch64 emulation, compare with this machine: ``make aarch64-check``.

The AArch64 side is what a Raspberry Pi with Raspberry Pi OS bookworm has: Debian bookworm's
arm64 Python 3.11 and C libraries, unpacked with ``dpkg -x`` into ROOT (no chroot, no binfmt), and
exactly the numpy and numba of the deploy folder's requirements.txt from their manylinux aarch64
wheels, unzipped onto a PYTHONPATH folder. qemu-user-static runs it:
``qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 ...``. Both live in a cache folder outside
the repository (``$BNNC_AARCH64_CACHE``, default ``~/.cache/bnnc/aarch64``) and are reused.

Then ``bnnc deploy`` builds the folder from the repository's compiler and runtime, and
tools/aarch64_probe.py runs it on both sides on the same input: the graph outputs and, where the
session hands them out, every intermediate value. Integer and bit-packed values must be equal,
float ones within 1e-5 relative to the tensor's largest magnitude. The first emulated run starts
from an empty kernel cache (it compiles) and the second reuses it; their times are printed.

Exit code 0 when everything matches, 1 on a mismatch or a failure, 77 (printed ``SKIP: why``)
when qemu-user-static is missing and cannot be installed here (not root, no apt-get, apt fails).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77
PYTHON = "python3.11"  # Raspberry Pi OS bookworm's
# arm64 packages for python3.11 and the C libraries its extension modules, numpy's and numba's
# wheels load (libgomp: numba's OpenMP threading layer; libstdc++: llvmlite)
PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "libgomp1", "zlib1g", "libexpat1", "libffi8", "libssl3",
    "libbz2-1.0", "liblzma5", "libcrypt1", "libuuid1", "libsqlite3-0", "libtinfo6",
    "libncursesw6", "libreadline8", "python3.11-minimal", "libpython3.11-minimal",
    "libpython3.11-stdlib", "python3.11",
)
MODELS = (  # (model, input): the first one present is deployed
    ("../shared/corpus/brevitas_tfc_1w1a_qonnx/model.onnx", "../shared/corpus/brevitas_tfc_1w1a_qonnx/input.npy"),
    ("../shared/corpus/digits_bnn/model.onnx", "../shared/corpus/digits_bnn/input.npy"),
    ("models/digits_bnn.onnx", None),
)


class Skip(Exception):
    """The emulator cannot be had on this machine."""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def ensure_qemu() -> str:
    found = shutil.which("qemu-aarch64-static")
    if found:
        return found
    if os.geteuid() != 0:
        raise Skip("qemu-user-static is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Skip("qemu-user-static is not installed and there is no apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        sh(["apt-get", "update", "-q"], env=env)
        sh(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "qemu-user-static"], env=env)
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["?"]
        raise Skip(f"apt-get could not install qemu-user-static ({last[0]})") from None
    return shutil.which("qemu-aarch64-static") or "qemu-aarch64-static"


def ensure_root(root: str) -> None:
    """Unpack the arm64 packages into ``root`` (built beside it, renamed when complete)."""
    if os.path.isfile(os.path.join(root, ".complete")):
        return
    if "arm64" not in sh(["dpkg", "--print-foreign-architectures"]).stdout.split():
        sh(["dpkg", "--add-architecture", "arm64"])
    work = tempfile.mkdtemp(prefix="root-", dir=os.path.dirname(root))
    debs = os.path.join(work, "debs")
    os.makedirs(debs)
    names = [p + ":arm64" for p in PACKAGES]
    try:
        sh(["apt-get", "download", "-q", *names], cwd=debs)
    except subprocess.CalledProcessError:  # no arm64 lists yet, or they are out of date
        sh(["apt-get", "update", "-q"])
        sh(["apt-get", "download", "-q", *names], cwd=debs)
    tree = os.path.join(work, "tree")
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        sh(["dpkg", "-x", deb, tree])
    open(os.path.join(tree, ".complete"), "w").close()
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tree, root)
    shutil.rmtree(work, ignore_errors=True)


def ensure_site(site: str, requirements: list[str]) -> None:
    """Unzip the manylinux aarch64 wheels of ``requirements`` (and their dependencies) into ``site``."""
    if os.path.isfile(os.path.join(site, ".complete")):
        return
    work = tempfile.mkdtemp(prefix="site-", dir=os.path.dirname(site))
    wheels, tree = os.path.join(work, "wheels"), os.path.join(work, "tree")
    sh([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "--platform", "manylinux2014_aarch64",
        "--platform", "manylinux_2_28_aarch64", "-d", wheels, *requirements])
    for whl in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
        with zipfile.ZipFile(whl) as z:
            z.extractall(tree)
    open(os.path.join(tree, ".complete"), "w").close()
    shutil.rmtree(site, ignore_errors=True)
    os.rename(tree, site)
    shutil.rmtree(work, ignore_errors=True)


def pick_model(work: str) -> tuple[str, str]:
    """The first corpus model present and an input for it (digits from models/ otherwise)."""
    for model, inp in MODELS:
        model = os.path.normpath(os.path.join(REPO, model))
        if os.path.isfile(model) and (inp is None or os.path.isfile(os.path.join(REPO, inp))):
            if inp is not None:
                return model, os.path.normpath(os.path.join(REPO, inp))
            x = np.load(os.path.join(REPO, "models", "digits_test.npz"))
            path = os.path.join(work, "input.npy")
            np.save(path, x[sorted(x.files)[0]][:4].astype(np.float32))
            return model, path
    raise SystemExit("no model to deploy: neither ../shared/corpus nor models/digits_bnn.onnx is here")


def compare(ref: dict, emu: dict) -> list[str]:
    """Mismatches between the host's and the emulated values (see module docstring)."""
    problems = [f"{k}: missing under emulation" for k in ref if k not in emu]
    for k in sorted(set(ref) & set(emu)):
        a, b = ref[k], emu[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{k}: {a.dtype}{list(a.shape)} here, {b.dtype}{list(b.shape)} emulated")
        elif a.dtype.kind == "f":
            scale = max(float(np.max(np.abs(a), initial=0.0)), np.finfo(a.dtype).tiny)
            err = float(np.max(np.abs(a - b), initial=0.0)) / scale
            if not err <= 1e-5:
                problems.append(f"{k}: float values differ by {err:.3g} of the largest magnitude")
        elif not np.array_equal(a, b):
            problems.append(f"{k}: {int(np.count_nonzero(a != b))} of {a.size} {a.dtype} elements differ")
    return problems


def emulated(qemu: str, root: str, site: str, cache: str, args: list[str], cwd: str) -> tuple[str, str, float]:
    """Run the emulated Python with ``args``: (stdout, stderr, wall seconds)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": site,
           "NUMBA_CACHE_DIR": cache, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    t0 = time.perf_counter()
    r = subprocess.run([qemu, "-L", root, os.path.join(root, "usr", "bin", PYTHON), "-s", *args],
                       cwd=cwd, env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"emulated run failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout, r.stderr, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    ap.add_argument("--cache", default=os.environ.get("BNNC_AARCH64_CACHE") or os.path.join(base, "bnnc", "aarch64"))
    ap.add_argument("--model", help="an .onnx or .bnn to deploy instead of the small corpus model")
    ap.add_argument("--input", help="its input (.npy; with --model)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads on both sides [default: 1]; with a large model (e.g. the corpus CNV), 2 "
                         "or more take the parallel kernels through the check too (slow under emulation)")
    args = ap.parse_args()
    if bool(args.model) != bool(args.input):
        ap.error("--model and --input go together")
    try:
        qemu = ensure_qemu()
    except Skip as e:
        print(f"SKIP: {e}")
        return SKIP
    os.makedirs(args.cache, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bnnc-aarch64-") as work:
            chosen = (os.path.abspath(args.model), os.path.abspath(args.input)) if args.model else pick_model(work)
            return check(qemu, args.cache, work, chosen, str(args.threads))
    except subprocess.CalledProcessError as e:
        print(f"FAILED: {' '.join(map(str, e.cmd))} exited with {e.returncode}\n{e.stdout or ''}{e.stderr or ''}")
        return 1


def check(qemu: str, cache: str, work: str, chosen: tuple[str, str], threads: str) -> int:
    from bnnc.deploy import deploy

    model, inp = chosen
    folder = os.path.join(work, "deploy")
    t0 = time.perf_counter()
    deploy(model, folder)
    with open(os.path.join(folder, "requirements.txt")) as f:
        reqs = f.read().split()
    print(f"deployed {model} -> {folder} ({time.perf_counter() - t0:.1f} s); "
          f"device requirements: {' '.join(reqs)}; {threads} thread(s)")
    root, site = os.path.join(cache, "root"), os.path.join(cache, "site-" + "-".join(reqs).replace("==", ""))
    t0 = time.perf_counter()
    ensure_root(root)
    ensure_site(site, reqs)
    print(f"emulated AArch64 environment ready in {cache} ({time.perf_counter() - t0:.1f} s)")
    probe = os.path.join(REPO, "tools", "aarch64_probe.py")
    host_env = {k: v for k, v in os.environ.items() if k != "BNNC_PLAN"}  # the default plan on both sides
    host_env["NUMBA_CACHE_DIR"] = os.path.join(work, "host-cache")
    r = sh([sys.executable, probe, folder, inp, os.path.join(work, "host.npz"), threads], env=host_env)
    print("x86-64:  " + r.stdout.strip())
    kernels = os.path.join(work, "arm-cache")
    arch, _, _ = emulated(qemu, root, site, kernels, ["-c", "import platform; print(platform.machine())"], work)
    print(f"emulated machine: {arch.strip()}")
    out, err, first = emulated(qemu, root, site, kernels, [probe, folder, inp, os.path.join(work, "arm.npz"), threads], work)
    print(f"aarch64, empty kernel cache: {first:.1f} s wall (Python + numba start, compile, run), "
          f"{sum(line.startswith('  [') for line in err.splitlines())} functions compiled; {out.strip()}")
    out, err, second = emulated(qemu, root, site, kernels, [probe, folder, inp, os.path.join(work, "arm2.npz"), threads], work)
    quiet = "compiling kernels" not in err
    print(f"aarch64, kernels from cache: {second:.1f} s wall, compile message {'absent' if quiet else 'PRINTED'}; "
          f"{out.strip()}")
    with np.load(os.path.join(work, "host.npz")) as h, np.load(os.path.join(work, "arm.npz")) as a:
        ref, emu = dict(h), dict(a)
    problems = compare(ref, emu) + ([] if quiet else ["the cached emulated run compiled again"])
    print(f"compared {len(ref)} arrays ({sum(k.startswith('val/') for k in ref)} intermediate values, "
          f"{sum(k.startswith('out/') for k in ref)} outputs)")
    for p in problems:
        print("MISMATCH " + p)
    print("OK: AArch64 matches x86-64" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
