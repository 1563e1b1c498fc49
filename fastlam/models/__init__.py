"""fastlam.models: encoder, inverse dynamics model, predictor and the world model."""
from ..configs import ENCODER_KINDS, ENCODER_SIZES, EncoderConfig, ModelConfig, RegularizerConfig, TransformerConfig
from .ac_predictor import ACPredictor, ACPredictorConfig
from .encoder import PixelEncoder, VideoEncoder, build_encoder
from .idm import InverseDynamicsModel
from .lam import LAMOutput, LatentActionWorldModel
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
