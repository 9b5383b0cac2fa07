"""bnnc: a post-training compiler from ONNX binarized neural networks to a bit-packed runtime."""

from bnnc.compiler import CompileResult, __version__, compile, compile_model, default_output_path
from runtime.errors import BnncError

__all__ = ["BnncError", "CompileResult", "compile", "compile_model", "default_output_path", "__version__"]
