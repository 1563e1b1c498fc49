"""Every run configuration of fastlam in one place: the dataclasses a YAML config file fills.

Plain data, below every layer that uses it (models, the trainer, the distributed runner), so
any of them may import a config without importing the code of another. Each class checks its
own keys (``check``); the choices that belong to a piece of code (a registry) are checked by
that code.
"""
from __future__ import annotations

from dataclasses import dataclass

# ---- distributed ---------------------------------------------------------------------------
BACKENDS = ("auto", "none", "ddp", "deepspeed")
ENCODER_PLACEMENTS = ("replicated", "sharded")


@dataclass
class DistributedConfig:
    backend: str = "auto"  # auto | none | ddp | deepspeed
    deepspeed_config: str | None = None  # a JSON file, e.g. configs/deepspeed/zero2.json
    encoder: str = "replicated"  # replicated (eval mode on every rank) | sharded (ZeRO-3 only)
    # Newton-Schulz variant of DeepSpeed's Muon: "standard" is the quintic iteration in bf16 that
    # torch.optim.Muon (the single-process optimizer) runs; "gram" is DeepSpeed's faster variant.
    muon_ns_method: str = "standard"
    muon_momentum: float = 0.95
    dist_backend: str = "auto"  # auto (nccl with CUDA, gloo without) | nccl | gloo
    timeout_min: float = 30.0
