"""bnnc's standalone runtime: reads a .bnn artifact and runs it. Imports only numpy and numba."""

import os

# Numba's OpenMP workers: without a policy libgomp spins for milliseconds after every parallel
# kernel and holds cores the user's code needs; sleeping at once (PASSIVE) makes every kernel wait
# for a wake-up (tens of microseconds on a VM), which took most of the second thread's gain. So
# they sleep, but only after a short spin that bridges the gaps between a plan's kernels
# (runtime/threads.py). Set before Numba starts its pool; values the user set are kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "3000")

from runtime.jitcache import use_versioned_cache  # noqa: E402

use_versioned_cache()  # before any kernel module is imported (runtime/jitcache.py says why)

from runtime import progress  # noqa: E402

progress.install()  # "compiling kernels for this CPU ..." on stderr whenever Numba compiles

from runtime.errors import BnncError  # noqa: E402
from runtime.session import InferenceSession, NodeArg  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BnncError", "InferenceSession", "NodeArg", "__version__"]
