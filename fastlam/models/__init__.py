"""fastlam.models: encoder, inverse dynamics model, predictor and the world model."""
from .ac_predictor import ACPredictor, ACPredictorConfig
from .encoder import ENCODER_KINDS, ENCODER_SIZES, EncoderConfig, PixelEncoder, VideoEncoder, build_encoder
from .idm import InverseDynamicsModel
from .lam import LAMOutput, LatentActionWorldModel, ModelConfig, RegularizerConfig, TransformerConfig
from .predictor import Predictor

__all__ = [
    "ACPredictor",
    "ACPredictorConfig",
    "ENCODER_KINDS",
    "ENCODER_SIZES",
    "EncoderConfig",
    "InverseDynamicsModel",
    "LAMOutput",
    "LatentActionWorldModel",
    "ModelConfig",
    "PixelEncoder",
    "Predictor",
    "RegularizerConfig",
    "TransformerConfig",
    "VideoEncoder",
    "build_encoder",
]
