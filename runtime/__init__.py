"""bnnc's standalone runtime: reads a .bnn artifact and runs it. Imports only numpy and numba."""

from runtime.errors import BnncError
from runtime.session import InferenceSession, NodeArg

__version__ = "0.1.0"
__all__ = ["BnncError", "InferenceSession", "NodeArg", "__version__"]
