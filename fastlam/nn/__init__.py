"""fastlam.nn: drop-in torch.nn modules built on fastlam.ops (usable outside fastlam's models)."""
from ..ops.rope import Rope1D, Rope3D
from .adaln import FrameAdaLN
from .attention import STAttention
from .attention_checkpoints import from_peer_attention_state_dict, to_peer_attention_state_dict
from .dropin_attention import GridAttention, SequenceAttention
from .prediction_loss import PredictionLoss
from .quantizers import Codebook, ResidualVQ, VQOutput, kmeans_plus_plus
from .regularizers import (
    REGULARIZER_KINDS,
    REGULARIZERS,
    GaussianLatentRegularizer,
    RegularizerKind,
    RegularizerOutput,
    SparseLatentRegularizer,
    UnconstrainedLatent,
    VectorQuantizer,
    build_regularizer,
    check_regularizer_config,
    regularizer_from_config,
)
from .scalar_quantizers import FSQ, LFQ
from .vq_checkpoints import from_peer_state_dict, to_peer_state_dict

__all__ = [
    "FSQ",
    "LFQ",
    "Codebook",
    "ResidualVQ",
    "VQOutput",
    "kmeans_plus_plus",
    "FrameAdaLN",
    "GridAttention",
    "SequenceAttention",
    "from_peer_attention_state_dict",
    "to_peer_attention_state_dict",
    "GaussianLatentRegularizer",
    "PredictionLoss",
    "REGULARIZER_KINDS",
    "REGULARIZERS",
    "RegularizerKind",
    "RegularizerOutput",
    "Rope1D",
    "Rope3D",
    "STAttention",
    "SparseLatentRegularizer",
    "UnconstrainedLatent",
    "VectorQuantizer",
    "build_regularizer",
    "check_regularizer_config",
    "regularizer_from_config",
    "from_peer_state_dict",
    "to_peer_state_dict",
]
