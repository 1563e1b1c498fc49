"""Value checks for a training config: every range and choice, checked before anything runs.

:func:`fastlam.config.from_dict` checks each value's *type*; :func:`validate_train_config`
checks what the types cannot say (``batch_size >= 1``, ``lr > 0``, ``kind`` among the known
regularizers, ``image_size`` divisible by the patch, ...), once, by asking each owner: every
config class checks its own keys (``TrainConfig.check`` and its parts, in
:mod:`fastlam.configs`), the regularizer registry its kinds and their choices, the prediction
loss its kinds; what remains here is the machine (``device``) and the weights file, checked first. Each error
is a :class:`~fastlam.config.ConfigError` naming the dotted key, the expected range and the value.
"""
from __future__ import annotations

import torch

from .checkpoint import check_weights_path
from .config import ConfigError
from .configs import TrainConfig, check_keys, one_of
from .nn.regularizers import check_regularizer_config
from .ops.prediction_loss import LOSS_KINDS


def validate_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key of ``cfg`` whose value is out of range, not an
    allowed choice, or inconsistent with another key."""
    _check_device(cfg.device)
    if cfg.model.encoder.checkpoint:
        # Headers only (a ViT-g file costs nothing here): a text file, a truncated download or
        # a folder without weights stops the run now, with one line, not in the middle of set-up.
        # Before the keys: a missing weights file is the first thing to say, whatever the kind.
        check_weights_path(cfg.model.encoder.checkpoint, name="model.encoder.checkpoint",
                           expected="local V-JEPA 2 weights: a .pt / .pth, a .safetensors file or a transformers "
                                    "folder (fastlam never downloads weights)")
    cfg.check()
    check_keys(cfg.model, "model", {"loss": one_of(*LOSS_KINDS)})
    check_regularizer_config(cfg.model.regularizer)


def _check_device(name: str) -> None:
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available (use device=auto or cpu)")
