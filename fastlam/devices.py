"""Where the trainer runs and in which precision: the device a config names (``auto``: CUDA when
there is one) and the autocast context for ``precision``; the state encoder uses the same two."""
from __future__ import annotations

import torch

from fastlam.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return dev


def autocast_for(device: torch.device, precision: str):
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision: expected auto, bf16 or fp32, got {precision!r}")
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

