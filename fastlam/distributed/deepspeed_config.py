"""The ZeRO JSON config (``configs/deepspeed/zero*.json``) against the training config.

The JSON file carries the ZeRO settings; the values the training config already fixes (batch
sizes, gradient accumulation, bf16, gradient clipping) are ``"auto"`` there and filled in here,
and an explicit value that contradicts the training config is an error before anything starts.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError
from ..inputs import read_json


def check_batch_split(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Micro-batch per rank; the global batch must split evenly or training does not start."""
    if grad_accum_steps < 1:
        raise ConfigError(f"grad_accum_steps: expected an int >= 1, got {grad_accum_steps}")
    if batch_size % (world_size * grad_accum_steps):
        raise ConfigError(
            f"batch_size={batch_size} (the global batch per optimizer step) is not divisible by "
            f"world_size ({world_size}) x grad_accum_steps ({grad_accum_steps})")
    return batch_size // (world_size * grad_accum_steps)


def build_deepspeed_config(path: str | Path, *, batch_size: int, world_size: int, grad_accum_steps: int,
                           bf16: bool, precision: str, grad_clip: float) -> dict:
    """Read a ZeRO JSON config and fill its ``"auto"`` values from the training config; an
    explicit value that disagrees with the training config is a ConfigError."""
    path = Path(path)
    ds = read_json(path, "distributed.deepspeed_config", "a DeepSpeed JSON config (see configs/deepspeed/)")
    micro = check_batch_split(batch_size, world_size, grad_accum_steps)

    def settle(key: str, want, where: dict, label: str):
        have = where.get(key, "auto")
        if have == "auto":
            where[key] = want
        elif have != want:
            raise ConfigError(f"{path}: {label}={have!r} contradicts the training config ({label} must be "
                              f"{want!r} for batch_size={batch_size}, world_size={world_size}, "
                              f"grad_accum_steps={grad_accum_steps}, precision={precision}, "
                              f"optim.grad_clip={grad_clip}); set it to \"auto\"")

    settle("train_batch_size", batch_size, ds, "train_batch_size")
    settle("train_micro_batch_size_per_gpu", micro, ds, "train_micro_batch_size_per_gpu")
    settle("gradient_accumulation_steps", grad_accum_steps, ds, "gradient_accumulation_steps")
    settle("gradient_clipping", float(grad_clip), ds, "gradient_clipping")
    if ds.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ConfigError(f"{path}: fp16 is not supported by fastlam (precision: bf16 or fp32); use \"bf16\"")
    ds.setdefault("fp16", {})["enabled"] = False
    bf16_section = ds.setdefault("bf16", {})
    if precision == "auto" and bf16_section.get("enabled", "auto") != "auto":
        bf16 = bool(bf16_section["enabled"])  # precision: auto defers to an explicit ZeRO config
    settle("enabled", bf16, bf16_section, "bf16.enabled")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{path}: remove {key!r}: fastlam builds Muon+AdamW and the warmup-cosine schedule "
                              "from the training config's optim section")
    zero = ds.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        # Stage 0 is plain data parallelism, which the ddp backend does with fastlam's own
        # optimizers and checkpoints; the ZeRO checkpoint/export path assumes partitions.
        raise ConfigError(f"{path}: zero_optimization.stage must be 1, 2 or 3, got {stage!r} "
                          "(for plain data parallelism use distributed.backend=ddp)")
    ds.setdefault("steps_per_print", 2**31 - 1)  # fastlam logs its own metrics from rank 0
    ds.setdefault("wall_clock_breakdown", False)
    return ds
