"""fastlam.models: encoder, inverse dynamics model, predictor and the world model."""
from .ac_predictor import ACPredictor, ACPredictorConfig
from .encoder import ENCODER_SIZES, EncoderConfig, VideoEncoder
from .idm import InverseDynamicsModel
from .lam import LAMOutput, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig
from .predictor import Predictor

__all__ = [
    "ACPredictor",
    "ACPredictorConfig",
    "ENCODER_SIZES",
    "EncoderConfig",
    "InverseDynamicsModel",
    "LAMOutput",
    "LatentActionWorldModel",
    "ModelConfig",
    "Predictor",
    "RegularizerConfig",
    "TransformerConfig",
    "VideoEncoder",
]
