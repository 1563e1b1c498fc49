"""The local runner: one optimizer step of fastlam's own optimizers on this process (alone or
as one rank of DDP), and its checkpoint-and-resume (single ``.pt`` files written by rank 0, the
frozen encoder recorded, not saved). The RNG state a checkpoint keeps is captured and restored
here too. DeepSpeed runs use ``fastlam.distributed.DeepSpeedRunner``, with the same methods."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from fastlam import distributed as fdist
from fastlam.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_copies
from fastlam.configs import TrainConfig
from fastlam.data.state_store import is_state_store
from fastlam.devices import autocast_for
from fastlam.inputs import one_line
from fastlam.models import LatentActionWorldModel
from fastlam.models.encoder_record import encoder_record, load_without_encoder, strip_encoder, verify_encoder
from fastlam.optim import build_optimizers, build_schedulers
from fastlam.step_metrics import StepMetrics


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])



class LocalRunner:
    """One optimizer step of fastlam's own optimizers (fastlam's Muon + AdamW) on this process,
    optionally as one rank of DDP; checkpoints are single ``.pt`` files written by rank 0.

    ``compile: true`` runs the model's forward (and its backward, through AOTAutograd) as
    ``torch.compile`` graphs with fastlam's custom ops as single nodes inside them; the VQ's
    codebook edits leave the graph and run eagerly between forward and backward (see
    ``LatentActionWorldModel.defer_codebook_edits``), so a steady-state step has no graph break."""

    def __init__(self, model: LatentActionWorldModel, cfg: TrainConfig, env: fdist.DistEnv, device: torch.device):
        self.cfg, self.env, self.device, self.model = cfg, env, device, model
        self.opts = build_optimizers(model, cfg.optim)
        self.scheds = build_schedulers(self.opts, cfg.steps, cfg.optim)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.encoder: dict | None = None  # encoder_record, computed at the first save
        # Batches of encoder states (a state store source): the encoder forward is skipped.
        self.from_states = is_state_store(cfg.data.source)
        self.net = self.ddp = model
        if env.backend == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            self.net = self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg.compile:
            model.defer_codebook_edits()
            # fallback_random: Inductor draws the noisy regularizer's noise from torch's RNG as
            # eager does (its own RNG would give other samples): same losses as eager, and a
            # resumed run still continues the uninterrupted one. (aot_eager runs torch's ops.)
            options = {"fallback_random": True} if cfg.compile_backend == "inductor" else None
            self.net = torch.compile(self.ddp, backend=cfg.compile_backend, options=options)

    @property
    def lrs(self) -> list[float]:
        return [g["lr"] for o in self.opts for g in o.param_groups][:2]

    def train_step(self, video: torch.Tensor) -> StepMetrics:
        """One optimizer step; its metrics stay on the device (no host sync: see StepMetrics)."""
        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        acc = StepMetrics()
        chunks = video.chunk(accum) if accum > 1 else (video,)
        for i, micro in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or self.env.backend != "ddp" else self.ddp.no_sync()
            with sync:
                with autocast_for(self.device, cfg.precision):
                    out = self.net(states=micro) if self.from_states else self.net(micro)
                # Where the eager forward makes them: after the search, before the backward.
                out.metrics.update(self.model.apply_codebook_edits())
                (out.loss / accum if accum > 1 else out.loss).backward()
            acc.add_micro(out, accum)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
        for o in self.opts:
            o.step()
            o.zero_grad(set_to_none=True)
        for s in self.scheds:
            s.step()
        acc.grad_norm = grad_norm.detach()
        return acc

    def save(self, ckpt_dir: Path, step: int, position: int, extra: dict, keep: int) -> Path:
        rngs = fdist.all_gather_objects(self.env, extra["rng"])
        path = ckpt_dir / f"step_{step:07d}.pt"
        if self.env.is_main:
            if self.encoder is None:  # hashed once: the encoder is frozen
                self.encoder = encoder_record(self.model, self.cfg.seed)
            state = {
                # The frozen encoder is recorded (kind, config, weights file or seed, sha256), not saved.
                "model": strip_encoder(self.model.state_dict()),
                "encoder": self.encoder,
                "model_config": extra["model_config"],
                "optimizers": [o.state_dict() for o in self.opts],
                "schedulers": [s.state_dict() for s in self.scheds],
                "step": step,
                "data_position": position,
                "rng": extra["rng"],
            }
            if self.env.distributed:
                state["rng_ranks"] = rngs
            save_checkpoint_copies([path, ckpt_dir / "latest.pt"], state)
            # Prune the oldest, never the file just written (whose path is returned and printed).
            older = [p for p in sorted(ckpt_dir.glob("step_*.pt")) if p != path]
            for p in older[: max(len(older) - (keep - 1), 0)]:
                p.unlink(missing_ok=True)
        fdist.barrier(self.env)
        return path

    def load(self, ckpt_dir: Path) -> dict:
        latest = ckpt_dir / "latest.pt"
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {latest}")
        try:
            state = load_checkpoint(latest, map_location=self.device, name="--resume")
            if "encoder" in state:  # the encoder was rebuilt from the config: check it is the same one
                verify_encoder(self.model, state["encoder"], f"--resume: {latest}")
                load_without_encoder(self.model, state["model"], f"--resume: {latest}")
                self.encoder = state["encoder"]
            else:  # a checkpoint that still carries the encoder's weights
                self.model.load_state_dict(state["model"])
            for o, s in zip(self.opts, state["optimizers"]):
                o.load_state_dict(s)
            for sc, s in zip(self.scheds, state["schedulers"]):
                sc.load_state_dict(s)
        except CheckpointError:
            raise
        except (RuntimeError, KeyError, EOFError, ValueError) as e:
            # A CheckpointError (a ValueError): one line from the command line, not a traceback.
            raise CheckpointError(f"--resume: {latest} could not be loaded ({type(e).__name__}: {one_line(e)})") from e
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.env.world_size:
            state["rng"] = ranks[self.env.rank]
        state["tag"] = latest.name
        return state

    def export(self, ckpt_dir: Path, tag: str, out_dir: Path) -> Path | None:
        path = self.model.save_pretrained(out_dir) if self.env.is_main else None
        fdist.barrier(self.env)
        return path

