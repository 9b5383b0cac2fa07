"""The binary kernels (plan ops bnnc.*, docs/binary_ops.md); importing this module registers them.

Bit convention and packing helpers: runtime/bitpack.py. One module per kernel family:
binary_conv (BinaryConv), binary_dense (BinaryDense), binary_weight (BinaryWeightConv,
BinaryWeightDense), binary_misc (Binarize, BitMaxPool); shared pieces in binary_common.
"""

from runtime.kernels import binary_conv, binary_dense, binary_misc, binary_weight  # noqa: F401  (registration)
