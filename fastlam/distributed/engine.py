"""The DeepSpeed ZeRO engine behind the trainer's loop: one optimizer step on this rank's share
of a global batch, its checkpoints and the consolidated export.

Gradient clipping: DeepSpeed 0.19.8 orthogonalises Muon gradients before it computes the global
norm, so its ``gradient_clipping`` would clip the Muon *updates*. With Muon on, ``optim.grad_clip``
is therefore not applied (``fastlam.distributed.preflight`` prints a note); with ``optim.use_muon:
false`` it is DeepSpeed's ordinary clip of the raw gradients. The logged ``grad_norm`` is the norm
DeepSpeed computes (Muon parameters contribute their orthogonalised update). ZeRO-3 with Muon
needs ``reduce_scatter: false`` (DeepSpeed refuses the combination).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..configs import DistributedConfig
from ..optim import warmup_cosine
from ..step_metrics import StepMetrics
from .checkpoints import (ENCODER_FILE, check_resumable, is_published, publish, rank_state_file, read_latest,
                          tag_name)
from .encoder_placement import TrainablePart
from .export import export_consolidated
from .memory import rank_memory
from .muon import build_deepspeed_muon, static_shape_compiles
from .process_group import DistEnv, barrier, import_deepspeed


class DeepSpeedRunner:
    """One optimizer step of DeepSpeed ZeRO on this rank's share of a global batch, plus its
    checkpoints and the consolidated export."""

    def __init__(self, model: nn.Module, train_cfg, env: DistEnv, device: torch.device, ds_config: dict):
        import_deepspeed()
        import deepspeed  # optional dependency: DeepSpeed (imported just above, or a ConfigError)

        dcfg: DistributedConfig = train_cfg.distributed
        self.env, self.device, self.model = env, device, model
        self.grad_accum = train_cfg.grad_accum_steps
        self.ds_config = ds_config
        self.stage = int(self.ds_config["zero_optimization"].get("stage", 0))
        self.bf16 = bool(self.ds_config["bf16"]["enabled"])
        self.encoder_sharded = dcfg.encoder == "sharded"
        self.module = model if self.encoder_sharded else TrainablePart(model)
        optimizer = build_deepspeed_muon(self.module, train_cfg.optim, dcfg.muon_ns_method, dcfg.muon_momentum)
        factor = warmup_cosine(train_cfg.steps, train_cfg.optim.warmup_frac, train_cfg.optim.min_lr_frac)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self._grads_measured: dict | None = None
        if not self.encoder_sharded:
            model.encoder.to(device)

    @property
    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups][:2]

    def train_step(self, video: torch.Tensor) -> StepMetrics:
        """``video``: this rank's share of the global batch; returns the mean of the micro-batch
        outputs and the global grad norm as a :class:`fastlam.step_metrics.StepMetrics` (device
        tensors: no host sync per micro-batch)."""
        acc = StepMetrics()
        for micro in video.chunk(self.grad_accum):
            if self.encoder_sharded:
                out = self.engine(micro.to(self.device, self.dtype))
            else:
                with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    states = self.model.encode(micro.to(self.device))
                out = self.engine(states.to(self.dtype))
            with static_shape_compiles():
                self.engine.backward(out.loss)
                if self._grads_measured is None and self.engine.is_gradient_accumulation_boundary():
                    self._grads_measured = rank_memory(self.engine)  # gradients peak here: step frees them
                self.engine.step()
            acc.add_micro(out, self.grad_accum)
        norm = self.engine.get_global_grad_norm()
        acc.grad_norm = torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32).detach()
        return acc

    # ---- checkpoints --------------------------------------------------------------------
    def save(self, ckpt_dir: Path, step: int, position: int, extra: dict, keep: int) -> Path:
        """Write ``ckpt_dir/step_XXXXXXX`` on every rank, then publish it as ``latest``."""
        tag = tag_name(step)
        tag_dir = ckpt_dir / tag
        if is_published(ckpt_dir, tag):
            return tag_dir  # resumed at this very step: the published checkpoint is this state
        if self.env.is_main and tag_dir.exists():
            shutil.rmtree(tag_dir)  # a leftover of a crash mid-save at this step: never published
        barrier(self.env)
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        save_checkpoint(rank_state_file(tag_dir, self.env.rank), {"rng": extra["rng"]})
        if self.env.is_main and not self.encoder_sharded:
            # The engine never held the replicated encoder: keep it with the shards, so an export
            # from this directory alone is complete.
            save_checkpoint(tag_dir / ENCODER_FILE, self.model.encoder.state_dict())
        barrier(self.env)
        self._publish(ckpt_dir, tag, {"step": step, "data_position": position, "world_size": self.env.world_size,
                                      "zero_stage": self.stage, "model_config": extra["model_config"]}, keep)
        barrier(self.env)
        return tag_dir

    def _publish(self, ckpt_dir: Path, tag: str, state: dict, keep: int) -> None:
        # A method of its own: tests/test_distributed.py holds a rank here to kill it mid-save.
        if self.env.is_main:
            publish(ckpt_dir, tag, state, keep)

    def load(self, ckpt_dir: Path) -> dict:
        """Restore engine (model, optimizer, scheduler) and this rank's RNG from ``latest``;
        returns fastlam's state (step, data_position). Errors name what is missing."""
        tag, state = read_latest(ckpt_dir)
        check_resumable(ckpt_dir / tag, state, self.env.world_size, self.stage)
        try:
            path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except Exception as e:  # a truncated or foreign file: say which checkpoint, keep the cause
            raise ValueError(f"--resume: the checkpoint {ckpt_dir / tag} could not be loaded ({type(e).__name__}: {e})") from e
        if path is None:
            raise ValueError(f"--resume: DeepSpeed found no loadable checkpoint in {ckpt_dir / tag}")
        rank_state = load_checkpoint(rank_state_file(ckpt_dir / tag, self.env.rank))
        if not self.encoder_sharded:
            enc = ckpt_dir / tag / ENCODER_FILE
            if not enc.is_file():
                raise FileNotFoundError(f"--resume: {enc} is missing (was this checkpoint written with encoder: sharded?)")
            self.model.encoder.load_state_dict(load_checkpoint(enc, map_location=self.device))
        state["rng"] = rank_state["rng"]
        state["tag"] = tag
        return state

    # ---- export -------------------------------------------------------------------------------
    def export(self, ckpt_dir: Path, tag: str, out_dir: Path) -> Path | None:
        """Consolidated fp32 weights of a saved tag into ``out_dir`` (rank 0), in the format
        ``LatentActionWorldModel.from_checkpoint`` loads."""
        barrier(self.env)
        result = None
        if self.env.is_main:
            result = export_consolidated(ckpt_dir / tag, out_dir)
        barrier(self.env)
        return result

    def memory_report(self) -> dict:
        """This rank's bytes after its first optimizer step, gradients as they were just before it."""
        report = rank_memory(self.engine, () if self.encoder_sharded else (self.model.encoder,))
        if self._grads_measured is not None:
            report["grads_bytes"] = max(report["grads_bytes"], self._grads_measured["grads_bytes"])
            report["largest_before_step"] = self._grads_measured["largest"]
        return report
