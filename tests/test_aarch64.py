"""The deploy folder of a corpus model gives the same values under AArch64 emulation as here.

Runs ``tools/aarch64_check.py`` (``make aarch64-check``): Debian bookworm's arm64 Python 3.11 with
the deploy folder's pinned numpy and numba wheels, under qemu-user-static, against this machine's
run of the same folder: outputs and every intermediate value the session hands out, integers and
bits equal, floats within 1e-5 relative; and the second emulated run must compile nothing. Skipped
only where the script says qemu-user-static cannot be installed (not root, no apt-get, apt fails).
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77


def test_deploy_folder_matches_under_aarch64_emulation():
    script = os.path.join(REPO, "tools", "aarch64_check.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=20 * 60)
    if r.returncode == SKIP:
        pytest.skip(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: AArch64 matches x86-64" in r.stdout
    assert "compile message absent" in r.stdout
