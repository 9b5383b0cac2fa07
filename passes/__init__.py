"""The default pipeline: every pass bnnc runs, in order, with why it stands where it does."""

from __future__ import annotations

from bnnc.pipeline import Pass
from passes.canonicalize_binarizers import CanonicalizeBinarizers
from passes.fold_affine_into_binary_output import FoldAffineIntoBinaryOutput
from passes.fold_batchnorm_into_float_layer import FoldBatchNormIntoFloatLayer
from passes.fold_constants import FoldConstants
from passes.fold_residual_add_into_binary_output import FoldResidualAddIntoBinaryOutput
from passes.fold_thresholds_into_binary_layers import FoldThresholdsIntoBinaryLayers
from passes.fuse_activation_into_float_layer import FuseActivationIntoFloatLayer
from passes.fuse_binarize_into_binary_output import FuseBinarizeIntoBinaryOutput
from passes.lower_qonnx_ops import LowerQonnxOpsToOnnx
from passes.move_binarizers_before_layout_ops import MoveBinarizersBeforeLayoutOps
from passes.recognize_binary_layers import RecognizeBinaryLayers
from passes.remove_identity_ops import RemoveIdentityOps


def default_pipeline() -> list[Pass]:
    """A fresh instance of every pass of the default pipeline, in order."""
    return [cls() for cls in PIPELINE]


PIPELINE: list[type[Pass]] = [
    # QONNX ops first: afterwards every node is a standard op onnxruntime can evaluate and fold
    LowerQonnxOpsToOnnx,
    # weights computed from weights (Sign(W), BipolarQuant(W), mean|W|, Transpose) and shape
    # arithmetic become plain constants, so later passes see literal weights
    FoldConstants,
    # no-ops left by exporters (and by folding) would hide the patterns the next passes match
    RemoveIdentityOps,
    # every binarizer idiom (Sign, ste_sign, Where forms, straight-through tricks) becomes one
    # bnnc.Sign that knows its value at 0, so the passes below match a single op
    CanonicalizeBinarizers,
    # binarizers move above Transpose/Reshape/MaxPool; tf2onnx's NHWC transposes then cancel
    MoveBinarizersBeforeLayoutOps,
    # the cancelled layout ops may leave reshapes to the same shape behind
    RemoveIdentityOps,
    # before any float fold touches them: ±alpha layers become BinaryConv/BinaryDense
    RecognizeBinaryLayers,
    # the float chain between a binary layer and the next binarizer becomes an integer rule
    FoldThresholdsIntoBinaryLayers,
    # what follows a float-output binary layer per channel goes into its scale and bias
    FoldAffineIntoBinaryOutput,
    # then a shortcut Add after it (Bi-Real Net) becomes its residual input
    FoldResidualAddIntoBinaryOutput,
    # and a Binarize of its result one more output, written in the same pass
    FuseBinarizeIntoBinaryOutput,
    # float layers only: binary layers are bnnc ops by now, and their BatchNorm goes into thresholds
    FoldBatchNormIntoFloatLayer,
    # last: a fused layer hides its activation from every pattern above
    FuseActivationIntoFloatLayer,
]
