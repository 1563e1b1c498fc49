"""Every check of a distributed run that can fail on the configuration alone, before a process
group, a model or data exist."""
from __future__ import annotations

import os

from ..config import ConfigError
from ..configs import DistributedConfig
from ..optim import OptimConfig
from .deepspeed_config import build_deepspeed_config, check_batch_split


def check_launch(dist_cfg: DistributedConfig, optim_cfg: OptimConfig, *, batch_size: int, grad_accum_steps: int,
                 precision: str, backend: str, world_size: int, device_type: str) -> dict | None:
    """The checks, on just the settings they read. Returns the resolved DeepSpeed config for
    the deepspeed backend, else None."""
    check_batch_split(batch_size, world_size, grad_accum_steps)
    if backend != "deepspeed":
        if dist_cfg.encoder == "sharded":
            raise ConfigError("distributed.encoder=sharded needs the deepspeed backend with ZeRO stage 3")
        return None
    want_bf16 = precision == "bf16" or (precision == "auto" and device_type == "cuda")
    clip = optim_cfg.grad_clip if optim_cfg.grad_clip > 0 else 0.0
    if clip and optim_cfg.use_muon:
        # DeepSpeed orthogonalises the Muon gradients *before* it takes the global norm, so its
        # clipping would scale the Muon updates themselves (norm ~ sqrt(rank) per matrix, far
        # above any usual threshold): a silent cut of Muon's learning rate. Muon's update has a
        # fixed scale whatever the gradient's size, so the raw-gradient clip of the
        # single-process recipe only matters in a spike; here it is off.
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"note: optim.grad_clip={clip} is not applied under DeepSpeed with Muon "
                  "(DeepSpeed would clip the orthogonalised updates); see fastlam/distributed/preflight.py")
        clip = 0.0
    ds = build_deepspeed_config(dist_cfg.deepspeed_config, batch_size=batch_size, world_size=world_size,
                                grad_accum_steps=grad_accum_steps, bf16=want_bf16, precision=precision,
                                grad_clip=clip)
    stage = ds["zero_optimization"].get("stage", 0)
    if dist_cfg.encoder == "sharded" and stage != 3:
        raise ConfigError(f"distributed.encoder=sharded needs ZeRO stage 3 ({dist_cfg.deepspeed_config} "
                          f"sets stage {stage}); use encoder: replicated")
    return ds


def preflight(train_cfg, backend: str, world_size: int, device_type: str) -> dict | None:
    """:func:`check_launch` on a training config (``fastlam.trainer.TrainConfig``, not imported:
    the trainer imports this package): its ``distributed`` and ``optim`` sections, batch size,
    gradient accumulation and precision."""
    return check_launch(train_cfg.distributed, train_cfg.optim, batch_size=train_cfg.batch_size,
                        grad_accum_steps=train_cfg.grad_accum_steps, precision=train_cfg.precision,
                        backend=backend, world_size=world_size, device_type=device_type)
