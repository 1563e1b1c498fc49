"""Train a latent action world model.

    python -m fastlam.train --config configs/tiny_cpu.yaml [key.sub=value ...] [--resume]

The run directory (``out_dir``) receives the resolved config (``config.yaml``), a JSONL
metrics log, atomic checkpoints (``checkpoints/step_XXXXXXX.pt`` and ``latest.pt``), the final
model (``final/model.safetensors`` + ``config.json``, loadable with
``LatentActionWorldModel.from_checkpoint``) and a loss-curve PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from fastlam.checkpoint import load_checkpoint, save_checkpoint
from fastlam.config import ConfigError, load_config, to_dict
from fastlam.models import LatentActionWorldModel, ModelConfig
from fastlam.optim import OptimConfig, build_optimizers, build_schedulers


@dataclass
class DataConfig:
    source: str = "data/samples"  # a directory, a text file of paths, or "synthetic"
    fps: float = 4.0
    crop: str = "random"
    short_policy: str = "pad"
    clips_per_video: int = 1
    num_workers: int = 0
    synthetic_clips: int = 512  # for source: synthetic (sprites moved by known actions)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 8
    steps: int = 300
    seed: int = 0
    out_dir: str = "runs/tiny_cpu"
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    progress: bool = True


# ---- data --------------------------------------------------------------------------------
class _EpochIndexed(torch.utils.data.Dataset):
    """Items are addressed by (epoch, index) so every DataLoader worker samples the same
    clip start for a given epoch: resumable and identical with any number of workers."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class ResumableBatches(torch.utils.data.Sampler):
    """Endless batches of (epoch, index) keys: a fresh permutation per epoch from (seed,
    epoch); ``position`` = batches consumed, which is all a resume needs."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0):
        if n < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} clips)")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self.per_epoch = n // batch_size

    def __iter__(self):
        pos = self.position
        while True:
            epoch, b = divmod(pos, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            yield [(epoch, int(i)) for i in perm[b * self.batch_size : (b + 1) * self.batch_size]]
            pos += 1


class _SyntheticClips(torch.utils.data.Dataset):
    def __init__(self, cfg: TrainConfig):
        from fastlam.data.synthetic import make_sprite_clips

        m = cfg.model
        self.video, self.actions = make_sprite_clips(
            cfg.data.synthetic_clips, steps=m.frames // m.encoder.tubelet, tubelet=m.encoder.tubelet,
            size=m.image_size, seed=cfg.seed,
        )

    def __len__(self):
        return self.video.shape[0]

    def __getitem__(self, i):
        return self.video[i]


def build_dataset(cfg: TrainConfig):
    if cfg.data.source == "synthetic":
        return _SyntheticClips(cfg)
    from fastlam.data import VideoClipDataset

    m = cfg.model
    return VideoClipDataset(
        cfg.data.source, num_frames=m.frames, fps=cfg.data.fps, size=(m.image_size, m.image_size),
        crop=cfg.data.crop, short_policy=cfg.data.short_policy, seed=cfg.seed,
        clips_per_video=cfg.data.clips_per_video,
    )


# ---- helpers -----------------------------------------------------------------------------
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


def plot_losses(metrics_file: Path, png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "pred_loss", "reg_loss"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"fastlam training: {metrics_file.parent.name}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the loop ----------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    dataset = build_dataset(cfg)  # fails early (empty folder, unreadable files) before any work
    model = LatentActionWorldModel(cfg.model)
    if cfg.model.encoder.checkpoint:
        from fastlam.models.vjepa2 import load_vjepa2_encoder

        load_vjepa2_encoder(model.encoder, cfg.model.encoder.checkpoint)
    model.to(device).train()
    opts = build_optimizers(model, cfg.optim)
    scheds = build_schedulers(opts, cfg.steps, cfg.optim)

    step, position = 0, 0
    latest = ckpt_dir / "latest.pt"
    if resume:
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {latest}")
        state = load_checkpoint(latest, map_location=device)
        model.load_state_dict(state["model"])
        for o, s in zip(opts, state["optimizers"]):
            o.load_state_dict(s)
        for sc, s in zip(scheds, state["schedulers"]):
            sc.load_state_dict(s)
        step, position = int(state["step"]), int(state["data_position"])
        _set_rng_state(state["rng"])
        print(f"resumed from {latest} at step {step}")

    sampler = ResumableBatches(len(dataset), cfg.batch_size, cfg.seed, position=position)
    loader = torch.utils.data.DataLoader(
        _EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
        # Its own generator, so creating the loader does not consume the global RNG that a
        # resume restores (which would make a resumed run diverge from an uninterrupted one).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    batches = iter(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    metrics_file = out / "metrics.jsonl"

    def checkpoint(at_step: int) -> Path:
        state = {
            "model": model.state_dict(),
            "model_config": json.dumps(to_dict(cfg.model)),
            "optimizers": [o.state_dict() for o in opts],
            "schedulers": [s.state_dict() for s in scheds],
            "step": at_step,
            "data_position": position,
            "rng": _rng_state(),
        }
        path = save_checkpoint(ckpt_dir / f"step_{at_step:07d}.pt", state)
        save_checkpoint(latest, state)
        old = sorted(ckpt_dir.glob("step_*.pt"))[: -cfg.keep_checkpoints]
        for p in old:
            p.unlink(missing_ok=True)
        return path

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, mininterval=2.0, file=sys.stdout)
    t_last, clips_since, first_loss, last_loss = time.perf_counter(), 0, None, None
    with metrics_file.open("a") as log:
        while step < cfg.steps:
            video = next(batches).to(device, non_blocking=True)
            position += 1
            with autocast_for(device, cfg.precision):
                out_ = model(video)
            if not torch.isfinite(out_.loss):
                # Do not overwrite the last good checkpoint with a diverged state.
                raise FloatingPointError(
                    f"loss became {out_.loss.item()} at step {step}; the last good checkpoint is {latest} (--resume)"
                )
            out_.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            for s in scheds:
                s.step()
            step += 1
            clips_since += video.shape[0]
            loss = out_.loss.item()
            first_loss = loss if first_loss is None else first_loss
            last_loss = loss
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                rate = clips_since / max(now - t_last, 1e-9)
                t_last, clips_since = now, 0
                row = {"step": step, "loss": loss, "pred_loss": out_.pred_loss.item(), "reg_loss": out_.reg_loss.item(),
                       "grad_norm": float(grad_norm), "clips_per_s": rate,
                       "lr": [g["lr"] for o in opts for g in o.param_groups][:2]}
                row.update({k: float(v) for k, v in out_.metrics.items()})
                if hasattr(dataset, "bad_files"):
                    row["bad_files"] = len(dataset.bad_files)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{rate:.1f}")
            bar.update(1)
            if step % cfg.ckpt_every == 0 and step < cfg.steps:
                checkpoint(step)
    bar.close()
    final_ckpt = checkpoint(step)
    final_dir = model.save_pretrained(out / "final")
    png = plot_losses(metrics_file, out / "loss_curve.png")
    summary = {"steps": step, "first_loss": first_loss, "last_loss": last_loss, "checkpoint": str(final_ckpt),
               "model": str(final_dir), "loss_curve": str(png) if png else None, "device": str(device)}
    if hasattr(dataset, "report"):
        summary["data_report"] = dataset.report()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlam.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest.pt")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. steps=50 model.regularizer.kind=sparse")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    args = ap.parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        ap.exit(2, f"config error: {e}\n")
    summary = train(cfg, resume=args.resume)
    print(f"\ntrained {summary['steps']} steps on {summary['device']}: loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
    if summary.get("data_report"):
        print(summary["data_report"])
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"model:      {summary['model']}  (LatentActionWorldModel.from_checkpoint)")
    print(f"loss curve: {summary['loss_curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
