"""Train a latent action world model.

    python -m fastlam.train --config configs/tiny_cpu.yaml [key.sub=value ...] [--resume]
    torchrun --nproc_per_node 2 fastlam/train.py --config ...                      (DDP)
    deepspeed fastlam/train.py --config ... distributed.deepspeed_config=configs/deepspeed/zero2.json

One loop for all three (``fastlam.distributed`` holds what only multi-process runs need):
``batch_size`` is the global batch per optimizer step, split over ranks and
``grad_accum_steps`` micro-batches; metrics are written by rank 0. SIGTERM makes every run
finish its step, save a checkpoint and return (``--resume`` continues it).

The run directory (``out_dir``) receives the resolved config (``config.yaml``), a JSONL
metrics log, atomic checkpoints (``checkpoints/step_XXXXXXX.pt`` and ``latest.pt``), the final
model (``final/model.safetensors`` + ``config.json``, loadable with
``LatentActionWorldModel.from_checkpoint``) and a loss-curve PNG. DeepSpeed runs write
DeepSpeed checkpoint directories (``checkpoints/step_XXXXXXX/`` and ``checkpoints/latest``)
and export consolidated fp32 weights to ``final/``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from fastlam.checkpoint import load_checkpoint, save_checkpoint
from fastlam import distributed as fdist
from fastlam.config import ConfigError, load_config, to_dict
from fastlam.distributed import DistributedConfig
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
    # auto: the DALI loader (NVDEC decoding, per-codec routing, prefetch) on CUDA when DALI is
    # installed, else the PyTorch DataLoader over VideoClipDataset (PyAV); dali | torch force one.
    loader: str = "auto"
    cache_mb: float = 0.0  # keep whole decoded videos in memory (per process) up to this size
    decode_timeout_s: float = 60.0
    synthetic_clips: int = 512  # for source: synthetic (sprites moved by known actions)
    # > 1 with wrap: a pan of sprites on a torus, all moved by the action (the learning test's data)
    synthetic_sprites: int = 1
    synthetic_wrap: bool = False


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
    grad_accum_steps: int = 1  # micro-batches per optimizer step (per rank)
    activation_checkpointing: bool = False  # recompute predictor blocks in backward
    diagnostics_clips: int = 8  # fixed held-out clips for the diag/* latent-use metrics (0: off)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


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
    epoch); ``position`` = global batches consumed, which is all a resume needs.

    ``batch_size`` is the global batch; with ``world_size`` > 1 each rank gets its contiguous
    share ``batch_size / world_size`` of every global batch: the ranks' shares are disjoint and
    together are exactly the batch a single process would draw."""

    def __init__(self, n: int, batch_size: int, seed: int, position: int = 0, rank: int = 0, world_size: int = 1):
        if n < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} clips)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}")
        self.n, self.batch_size, self.seed, self.position = n, batch_size, seed, position
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n // batch_size

    def __iter__(self):
        pos = self.position
        while True:
            epoch, b = divmod(pos, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            share = self.batch_size // self.world_size
            start = b * self.batch_size + self.rank * share
            yield [(epoch, int(i)) for i in perm[start : start + share]]
            pos += 1


class _SyntheticClips(torch.utils.data.Dataset):
    def __init__(self, cfg: TrainConfig):
        from fastlam.data.synthetic import make_sprite_clips

        m = cfg.model
        if cfg.data.synthetic_sprites < 1:
            raise ConfigError(f"data.synthetic_sprites: expected an int >= 1, got {cfg.data.synthetic_sprites!r}")
        self.video, self.actions = make_sprite_clips(
            cfg.data.synthetic_clips, steps=m.frames // m.encoder.tubelet, tubelet=m.encoder.tubelet,
            size=m.image_size, num_sprites=cfg.data.synthetic_sprites, wrap=cfg.data.synthetic_wrap, seed=cfg.seed,
        )

    def __len__(self):
        return self.video.shape[0]

    def __getitem__(self, i):
        return self.video[i]


def build_dataset(cfg: TrainConfig):
    """The clip dataset; bad files found by any DataLoader worker are appended to
    ``out_dir/bad_files.jsonl`` so the main process can report them all."""
    if cfg.data.source == "synthetic":
        return _SyntheticClips(cfg)
    from fastlam.data import VideoClipDataset

    m = cfg.model
    return VideoClipDataset(
        cfg.data.source, num_frames=m.frames, fps=cfg.data.fps, size=(m.image_size, m.image_size),
        crop=cfg.data.crop, short_policy=cfg.data.short_policy, seed=cfg.seed,
        clips_per_video=cfg.data.clips_per_video, cache_mb=cfg.data.cache_mb,
        decode_timeout_s=cfg.data.decode_timeout_s, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
    )


def use_dali(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.data.loader not in ("auto", "dali", "torch"):
        raise ConfigError(f"data.loader: expected auto, dali or torch, got {cfg.data.loader!r}")
    if cfg.data.source == "synthetic" or cfg.data.loader == "torch":
        if cfg.data.loader == "dali":
            raise ConfigError("data.loader=dali needs real video, not data.source=synthetic")
        return False
    from fastlam.data.dali import dali_available

    if cfg.data.loader == "dali":
        if not dali_available():
            raise ConfigError("data.loader=dali: NVIDIA DALI is not installed (pip install -e '.[dali]')")
        return True
    return device.type == "cuda" and dali_available()


def iter_batches(cfg: TrainConfig, dataset, device: torch.device, env, position: int):
    """Endless batches for this rank, starting after ``position`` global batches.

    ``position`` is the only data state a checkpoint keeps, whichever loader runs: the DALI
    loader's (epoch, clips consumed) is derived from it, so a resume continues exactly."""
    per_rank = cfg.batch_size // env.world_size
    if use_dali(cfg, device):
        from fastlam.data.dali import DaliVideoLoader

        m = cfg.model
        loader = DaliVideoLoader(
            cfg.data.source, batch_size=per_rank, num_frames=m.frames, fps=cfg.data.fps,
            size=(m.image_size, m.image_size), crop=cfg.data.crop, short_policy=cfg.data.short_policy,
            seed=cfg.seed, clips_per_video=cfg.data.clips_per_video, rank=env.rank, world_size=env.world_size,
            device=device.type, device_id=device.index if device.type == "cuda" else None,
            dtype=torch.float32, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
            decode_timeout_s=cfg.data.decode_timeout_s,
        )
        state = loader.state_dict()["sampler"]
        state["epoch"], done = divmod(position, len(loader))
        state["consumed"] = done * per_rank
        loader.load_state_dict({"sampler": state})
        while True:
            yield from loader
    sampler = ResumableBatches(len(dataset), cfg.batch_size, cfg.seed, position=position,
                               rank=env.rank, world_size=env.world_size)
    yield from torch.utils.data.DataLoader(
        _EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
        # Its own generator, so creating the loader does not consume the global RNG that a
        # resume restores (which would make a resumed run diverge from an uninterrupted one).
        generator=torch.Generator().manual_seed(cfg.seed),
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
    from fastlam.diagnostics import plot_diagnostics

    has_diag = any("diag/l1_own" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_diag else 1, figsize=(13 if has_diag else 7, 4), squeeze=False)
    ax = axes[0, 0]
    if has_diag:
        plot_diagnostics(axes[0, 1], rows)
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


class _LocalRunner:
    """One optimizer step of fastlam's own optimizers (torch Muon + AdamW) on this process,
    optionally as one rank of DDP; checkpoints are single ``.pt`` files written by rank 0."""

    def __init__(self, model: LatentActionWorldModel, cfg: TrainConfig, env: fdist.DistEnv, device: torch.device):
        self.cfg, self.env, self.device, self.model = cfg, env, device, model
        self.opts = build_optimizers(model, cfg.optim)
        self.scheds = build_schedulers(self.opts, cfg.steps, cfg.optim)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.net = model
        if env.backend == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @property
    def lrs(self) -> list[float]:
        return [g["lr"] for o in self.opts for g in o.param_groups][:2]

    def train_step(self, video: torch.Tensor):
        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        sums, metrics = [0.0, 0.0, 0.0], {}
        chunks = video.chunk(accum) if accum > 1 else (video,)
        for i, micro in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or self.env.backend != "ddp" else self.net.no_sync()
            with sync:
                with autocast_for(self.device, cfg.precision):
                    out = self.net(micro)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"loss became {out.loss.item()}")
                (out.loss / accum if accum > 1 else out.loss).backward()
            for j, v in enumerate((out.loss, out.pred_loss, out.reg_loss)):
                sums[j] += v.item() / accum
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
        for o in self.opts:
            o.step()
            o.zero_grad(set_to_none=True)
        for s in self.scheds:
            s.step()
        return sums, metrics, float(grad_norm)

    def save(self, ckpt_dir: Path, step: int, position: int, extra: dict, keep: int) -> Path:
        rngs = fdist.all_gather_objects(self.env, extra["rng"])
        path = ckpt_dir / f"step_{step:07d}.pt"
        if self.env.is_main:
            state = {
                "model": self.model.state_dict(),
                "model_config": extra["model_config"],
                "optimizers": [o.state_dict() for o in self.opts],
                "schedulers": [s.state_dict() for s in self.scheds],
                "step": step,
                "data_position": position,
                "rng": extra["rng"],
            }
            if self.env.distributed:
                state["rng_ranks"] = rngs
            save_checkpoint(path, state)
            save_checkpoint(ckpt_dir / "latest.pt", state)
            for p in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
                p.unlink(missing_ok=True)
        fdist.barrier(self.env)
        return path

    def load(self, ckpt_dir: Path) -> dict:
        latest = ckpt_dir / "latest.pt"
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {latest}")
        try:
            state = load_checkpoint(latest, map_location=self.device)
            self.model.load_state_dict(state["model"])
            for o, s in zip(self.opts, state["optimizers"]):
                o.load_state_dict(s)
            for sc, s in zip(self.scheds, state["schedulers"]):
                sc.load_state_dict(s)
        except (RuntimeError, KeyError, EOFError, ValueError) as e:
            raise ValueError(f"--resume: {latest} could not be loaded ({type(e).__name__}: {e})") from e
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.env.world_size:
            state["rng"] = ranks[self.env.rank]
        state["tag"] = latest.name
        return state

    def export(self, ckpt_dir: Path, tag: str, out_dir: Path) -> Path | None:
        path = self.model.save_pretrained(out_dir) if self.env.is_main else None
        fdist.barrier(self.env)
        return path


# ---- the loop ----------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False) -> dict:
    backend = fdist.resolve_backend(cfg.distributed)
    # Settle every configuration mismatch before a process group, a model or data exist.
    ds_config = fdist.preflight(cfg, backend, int(os.environ.get("WORLD_SIZE", "1") or 1),
                                resolve_device(cfg.device).type)
    env = fdist.init_process_group(cfg.distributed, backend)
    try:
        summary = _train(cfg, env, resume, ds_config)
    except BaseException:
        fdist.shutdown(env, clean=False)
        raise
    fdist.shutdown(env)
    return summary


def _train(cfg: TrainConfig, env: fdist.DistEnv, resume: bool, ds_config: dict | None) -> dict:
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = resolve_device(cfg.device)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
    torch.manual_seed(cfg.seed)

    dataset = build_dataset(cfg)  # fails early (empty folder, unreadable files) before any work
    model = LatentActionWorldModel(cfg.model)
    if cfg.model.encoder.checkpoint:
        from fastlam.models.vjepa2 import load_vjepa2_encoder

        load_vjepa2_encoder(model.encoder, cfg.model.encoder.checkpoint)
    model.predictor.checkpoint_blocks = cfg.activation_checkpointing
    model.to(device).train()
    if env.world_size > 1:
        # Same weights on every rank (seeded above), but each rank's own noise stream.
        torch.manual_seed(cfg.seed + 1_000_003 * env.rank)
    if env.backend == "deepspeed":
        runner = fdist.DeepSpeedRunner(model, cfg, env, device, ds_config)
    else:
        runner = _LocalRunner(model, cfg, env, device)

    step, position = 0, 0
    if resume:
        state = runner.load(ckpt_dir)
        step, position = int(state["step"]), int(state["data_position"])
        _set_rng_state(state["rng"])
        if env.is_main:
            print(f"resumed from {ckpt_dir / state['tag']} at step {step}")

    batches = iter_batches(cfg, dataset, device, env, position)
    metrics_file = out / "metrics.jsonl"
    model_config = json.dumps(to_dict(cfg.model))

    def checkpoint(at_step: int) -> Path:
        return runner.save(ckpt_dir, at_step, position, {"rng": _rng_state(), "model_config": model_config},
                           cfg.keep_checkpoints)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and env.is_main), mininterval=2.0, file=sys.stdout)
    speed = fdist.Throughput(model, device, env.world_size)
    first_loss, last_loss, preempted, measured = None, None, False, False
    log = metrics_file.open("a") if env.is_main else None
    diag = _diagnostics(cfg, env)
    try:
        with fdist.StopFlag() as stop:
            while step < cfg.steps:
                video = next(batches)
                position += 1
                try:
                    sums, metrics, grad_norm = runner.train_step(video.to(device, non_blocking=True))
                except FloatingPointError as e:
                    # Do not overwrite the last good checkpoint with a diverged state.
                    raise FloatingPointError(f"{e} at step {step}; the last good checkpoint is in {ckpt_dir} (--resume)") from None
                step += 1
                speed.add(cfg.batch_size)
                stop_now = stop.requested
                if env.distributed:
                    # One collective per step: the global batch's mean losses for rank 0's log,
                    # and whether any rank was asked to stop (so all stop at the same step).
                    keys = sorted(metrics)
                    red = fdist.all_reduce_sum(env, sums + [metrics[k] for k in keys] + [float(stop_now)])
                    sums = [v / env.world_size for v in red[:3]]
                    metrics = {k: v / env.world_size for k, v in zip(keys, red[3:-1])}
                    stop_now = red[-1] > 0
                loss = sums[0]
                first_loss = loss if first_loss is None else first_loss
                last_loss = loss
                if log is not None and (step % cfg.log_every == 0 or step == cfg.steps or stop_now):
                    rates = speed.window()
                    row = {"step": step, "loss": loss, "pred_loss": sums[1], "reg_loss": sums[2],
                           "grad_norm": grad_norm, **rates, "lr": runner.lrs}
                    row.update(metrics)
                    if hasattr(dataset, "bad_files"):
                        row["bad_files"] = len(dataset.bad_files)
                    if diag is not None:
                        from fastlam.diagnostics import progress_postfix

                        row.update(diag(model))
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{rates['clips_per_s']:.1f}",
                                    **(progress_postfix(row) if diag is not None else {}))
                bar.update(1)
                if env.backend == "deepspeed" and not measured:
                    _write_memory(out, env, runner)  # collective: every rank, once
                    measured = True
                if stop_now:
                    preempted = True
                    break
                if step % cfg.ckpt_every == 0 and step < cfg.steps:
                    checkpoint(step)
    finally:
        if log is not None:
            log.close()
    bar.close()
    final_ckpt = checkpoint(step)
    summary = {"steps": step, "first_loss": first_loss, "last_loss": last_loss, "checkpoint": str(final_ckpt),
               "model": None, "loss_curve": None, "device": str(device), "backend": env.backend,
               "world_size": env.world_size, "preempted": preempted}
    if preempted:
        if env.is_main:
            print(f"\nstopped by signal at step {step}: checkpoint {final_ckpt} (continue with --resume)")
    else:
        final_dir = runner.export(ckpt_dir, Path(final_ckpt).name, out / "final")
        summary["model"] = str(final_dir) if final_dir else None
    if env.is_main:
        png = plot_losses(metrics_file, out / "loss_curve.png")
        summary["loss_curve"] = str(png) if png else None
        if hasattr(dataset, "report"):
            summary["data_report"] = dataset.report()
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _diagnostics(cfg: TrainConfig, env: fdist.DistEnv):
    """The latent-use diagnostics (fastlam.diagnostics) on rank 0, or None: off when
    ``diagnostics_clips`` is 0 and under DeepSpeed (ZeRO-3 shards the weights rank 0 would need)."""
    if cfg.diagnostics_clips < 0:
        raise ConfigError(f"diagnostics_clips: expected an int >= 0, got {cfg.diagnostics_clips}")
    if not env.is_main or cfg.diagnostics_clips == 0 or env.backend == "deepspeed":
        return None
    from fastlam.diagnostics import TrainDiagnostics

    try:
        return TrainDiagnostics.for_config(cfg, cfg.diagnostics_clips)
    except (ValueError, RuntimeError) as e:  # never stop a run for its diagnostics
        print(f"diagnostics off: no held-out clips from data.source ({type(e).__name__}: {e})")
        return None


def _write_memory(out: Path, env: fdist.DistEnv, runner) -> None:
    """Bytes each rank holds after its first optimizer step (``memory.json``)."""
    per_rank = fdist.all_gather_objects(env, runner.memory_report())
    if env.is_main:
        (out / "memory.json").write_text(json.dumps({"zero_stage": runner.stage, "world_size": env.world_size,
                                                     "per_rank": per_rank}, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlam.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoints/latest.pt")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. steps=50 model.regularizer.kind=sparse")
    ap.add_argument("--deepspeed_config", default=None,
                    help="ZeRO JSON config (same as distributed.deepspeed_config=...); selects the DeepSpeed backend")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    args = ap.parse_intermixed_args(argv)  # overrides may come before or after options
    overrides = list(args.overrides)
    if args.deepspeed_config:
        overrides.append(f"distributed.deepspeed_config={args.deepspeed_config}")
    try:
        cfg = load_config(TrainConfig, args.config, overrides)
        summary = train(cfg, resume=args.resume)
    except ConfigError as e:
        ap.exit(2, f"config error: {e}\n")
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return 0
    if summary["preempted"]:
        print(f"\nstopped at step {summary['steps']} by a signal; checkpoint: {summary['checkpoint']} (--resume continues)")
        return 0
    print(f"\ntrained {summary['steps']} steps on {summary['device']}: loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
    if summary.get("data_report"):
        print(summary["data_report"])
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"model:      {summary['model']}  (LatentActionWorldModel.from_checkpoint)")
    print(f"loss curve: {summary['loss_curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
