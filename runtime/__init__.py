"""bnnc's standalone runtime: reads a .bnn artifact and runs it. Imports only numpy and numba."""

import os

# Numba's OpenMP workers would otherwise spin after every parallel kernel and hold cores that the
# next kernel's threads (or the GEMM worker threads, see runtime.threads) are waiting for; on a
# small machine that made multi-threaded runs 10x slower than one thread. It must be set before
# Numba starts its thread pool; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from runtime.jitcache import use_versioned_cache  # noqa: E402

use_versioned_cache()  # before any kernel module is imported (runtime/jitcache.py says why)

from runtime import progress  # noqa: E402

progress.install()  # "compiling kernels for this CPU ..." on stderr whenever Numba compiles

from runtime.errors import BnncError  # noqa: E402
from runtime.session import InferenceSession, NodeArg  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BnncError", "InferenceSession", "NodeArg", "__version__"]
