"""The LAM trainer: its configuration (:class:`TrainConfig`), the data it feeds, and one loop
for a single process, DDP and DeepSpeed (:func:`train`); ``fastlam/train.py`` is the command
line over it, and evaluations and scripts import what they need from here.

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

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from fastlam import distributed as fdist
from fastlam import run_folder
from fastlam.checkpoint import CheckpointError, load_checkpoint, save_checkpoint_copies
from fastlam.config import ConfigError, load_config, to_dict
from fastlam.config_checks import validate_train_config
# The run configuration lives with every other (fastlam.configs); imported here under the names
# users imported from the trainer (fastlam.trainer.TrainConfig, DataConfig).
from fastlam.configs import DataConfig, TrainConfig
from fastlam.dashboard import Dashboard
from fastlam.data import VideoClipDataset
from fastlam.data.dali import DaliVideoLoader, dali_available
from fastlam.data.dali_stream import DaliStreamLoader
from fastlam.data.manifest import check_manifest_files
from fastlam.data.shards import (ShardLoader, ShardStream, is_shard_source, load_stream_state, merge_states,
                                 prune_stream_states, save_stream_state)
from fastlam.data.state_store import StateStream, is_state_store
from fastlam.data.synthetic import make_sprite_clips
from fastlam.diagnostics import TrainDiagnostics, plot_diagnostics, progress_postfix
from fastlam.epochs import EpochIndexed
from fastlam.inputs import one_line
from fastlam.models import LatentActionWorldModel
from fastlam.models.encoder_record import (encoder_fingerprint, encoder_record, load_without_encoder, strip_encoder,
                                           verify_encoder)
from fastlam.models.vjepa2 import load_vjepa2_encoder
from fastlam.muon import muon_step_flops
from fastlam.optim import build_optimizers, build_schedulers
from fastlam.step_metrics import NonFiniteWindow, StepMetrics


# ---- data --------------------------------------------------------------------------------
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
        # The epoch's permutation is drawn once per epoch (O(n) every n / batch_size batches),
        # not per batch: O(batch) per step. Same order as before: a pure function of (seed, epoch).
        pos, perm_epoch, perm = self.position, None, None
        share = self.batch_size // self.world_size
        while True:
            epoch, b = divmod(pos, self.per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
            start = b * self.batch_size + self.rank * share
            yield [(epoch, i) for i in perm[start : start + share]]
            pos += 1


class _SyntheticClips(torch.utils.data.Dataset):
    def __init__(self, cfg: TrainConfig):
        m = cfg.model  # data.synthetic_sprites >= 1: checked with the config (DataConfig.check)
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

    m = cfg.model
    if is_state_store(cfg.data.source):  # encoder states (python -m fastlam.data encode): no decoding
        return StateStream(cfg.data.source, seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer, drop_last=True,
                           bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
                           max_bad_fraction=cfg.data.max_bad_fraction)
    if is_shard_source(cfg.data.source):  # rank and world size are set by iter_batches
        return ShardStream(cfg.data.source, num_frames=m.frames, fps=cfg.data.fps,
                           size=(m.image_size, m.image_size), crop=cfg.data.crop,
                           short_policy=cfg.data.short_policy, seed=cfg.seed,
                           shuffle_buffer=cfg.data.shuffle_buffer, drop_last=True,
                           bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
                           max_bad_fraction=cfg.data.max_bad_fraction)
    return VideoClipDataset(
        cfg.data.source, num_frames=m.frames, fps=cfg.data.fps, size=(m.image_size, m.image_size),
        crop=cfg.data.crop, short_policy=cfg.data.short_policy, seed=cfg.seed,
        clips_per_video=cfg.data.clips_per_video, cache_mb=cfg.data.cache_mb,
        decode_timeout_s=cfg.data.decode_timeout_s, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
        max_bad_fraction=cfg.data.max_bad_fraction,
    )


def use_dali(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.data.source == "synthetic" or cfg.data.loader == "torch" or is_shard_source(cfg.data.source):
        if cfg.data.loader in ("dali", "dali_stream"):
            raise ConfigError(f"data.loader={cfg.data.loader} needs a folder, list or manifest of real video, "
                              f"not data.source={cfg.data.source!r}")
        return False

    if cfg.data.loader in ("dali", "dali_stream"):
        if not dali_available():
            raise ConfigError("data.loader=dali: NVIDIA DALI is not installed (pip install -e '.[dali]')")
        return True
    return device.type == "cuda" and dali_available()


def iter_batches(cfg: TrainConfig, dataset, device: torch.device, env, position: int,
                 data_state: dict | None = None):
    """Endless batches for this rank, starting after ``position`` global batches.

    ``position`` is the only data state a checkpoint keeps for folders, lists and manifests,
    whichever loader runs: the DALI loader's (epoch, clips consumed) is derived from it, so a
    resume continues exactly. Shard sources resume from ``data_state`` (the merged consumed
    bitmap saved beside the checkpoint), with any world size."""
    per_rank = cfg.batch_size // env.world_size

    if isinstance(dataset, ShardStream):
        if dataset.n // env.world_size < per_rank:
            raise ConfigError(f"batch_size={cfg.batch_size}: each of the {env.world_size} rank(s) "
                              f"needs {per_rank} clips per batch but the shards hold {dataset.n} "
                              f"(one clip per video per epoch)")
        dataset.rank, dataset.world_size = env.rank, env.world_size
        loader = ShardLoader(dataset, per_rank, num_workers=cfg.data.num_workers,
                             pin_memory=device.type == "cuda", drop_last_batch=True)
        if data_state is not None:
            loader.load_state_dict(data_state)
        dataset.loader_state = loader.state_dict  # what checkpoint() saves
        while True:
            yield from loader
    if use_dali(cfg, device):
        m = cfg.model
        # dali_stream: planning in DALI's worker processes, DALI prefetch + async execution.
        loader = (DaliStreamLoader if cfg.data.loader == "dali_stream" else DaliVideoLoader)(
            cfg.data.source, batch_size=per_rank, num_frames=m.frames, fps=cfg.data.fps,
            size=(m.image_size, m.image_size), crop=cfg.data.crop, short_policy=cfg.data.short_policy,
            seed=cfg.seed, clips_per_video=cfg.data.clips_per_video, rank=env.rank, world_size=env.world_size,
            device=device.type, device_id=device.index if device.type == "cuda" else None,
            dtype=torch.float32, bad_file_log=Path(cfg.out_dir) / "bad_files.jsonl",
            decode_timeout_s=cfg.data.decode_timeout_s,
        )
        loader.dataset.max_bad_fraction = cfg.data.max_bad_fraction  # its own copy of the dataset
        state = loader.state_dict()["sampler"]
        state["epoch"], done = divmod(position, len(loader))
        state["consumed"] = done * per_rank
        loader.load_state_dict({"sampler": state})
        while True:
            yield from loader
    sampler = ResumableBatches(len(dataset), cfg.batch_size, cfg.seed, position=position,
                               rank=env.rank, world_size=env.world_size)
    yield from torch.utils.data.DataLoader(
        EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=cfg.data.num_workers > 0,
        # Its own generator, so creating the loader does not consume the global RNG that a
        # resume restores (which would make a resumed run diverge from an uninterrupted one).
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def check_state_store(store: StateStream, model: LatentActionWorldModel, cfg: TrainConfig) -> None:
    """Refuse a state store made by another encoder (its fingerprint: config + weights) or for
    other clips than the run's (frames, size, fps): its states would train a model of them."""
    h, want = store.header, encoder_fingerprint(model.encoder)
    if h["fingerprint"] != want:
        raise ConfigError(f"data.source: the state store {cfg.data.source} was encoded by another encoder "
                          f"(fingerprint {h['fingerprint'][:16]}..., {h['encoder'].get('kind')} encoder) than "
                          f"model.encoder builds (fingerprint {want[:16]}..., {cfg.model.encoder.kind}); encode "
                          f"the store with this run's model.encoder and seed, or train with the store's")
    m = cfg.model
    tub, p = m.encoder.tubelet, m.encoder.patch_size
    shape = [m.frames // tub, (m.image_size // p) ** 2, model.encoder.width]
    mine = {"num_frames": m.frames, "size": [m.image_size, m.image_size], "fps": float(cfg.data.fps), "shape": shape}
    diff = {k: (h[k], v) for k, v in mine.items() if h[k] != v}
    if diff:
        raise ConfigError("data.source: the state store's clips differ from this run's: "
                          + "; ".join(f"{k} {a} in the store, {b} here" for k, (a, b) in diff.items()))


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

    has_diag = any("diag/l1_own" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_diag else 1, figsize=(13 if has_diag else 7, 4), squeeze=False)
    ax = axes[0, 0]
    if has_diag:
        plot_diagnostics(axes[0, 1], rows)
    steps = [r["step"] for r in rows]
    # The total is drawn wide and pale beneath its terms: when reg_loss is small, loss and
    # pred_loss coincide, and a thin line on top of the other hid one of them.
    styles = {"loss": dict(linewidth=4.0, alpha=0.35, zorder=1), "pred_loss": dict(linewidth=1.4, zorder=2),
              "reg_loss": dict(linewidth=1.4, linestyle="--", zorder=2)}
    for key in ("loss", "pred_loss", "reg_loss", "l1", "lpips"):  # l1 / lpips: train_decoder's terms
        if all(key in r for r in rows):
            ax.plot(steps, [r[key] for r in rows], label=key, **styles.get(key, {}))
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


# ---- the loop ----------------------------------------------------------------------------
def check_run(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> tuple[str, dict | None]:
    """Every check that needs no model, data or process group, writing nothing: the config,
    the distributed set-up and ``out_dir`` against ``resume`` / ``overwrite``. Returns the
    distributed backend and the settled DeepSpeed config (None without DeepSpeed)."""
    validate_train_config(cfg)
    backend = fdist.resolve_backend(cfg.distributed)
    # Settle every configuration mismatch before a process group, a model or data exist.
    ds_config = fdist.preflight(cfg, backend, int(os.environ.get("WORLD_SIZE", "1") or 1),
                                resolve_device(cfg.device).type)
    # Data checks that can fail (a manifest that is no manifest, or whose videos moved) come
    # before out_dir is touched: a failed start leaves no run folder to clean up.
    check_manifest_files(cfg.data.source)
    run_folder.check_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite)
    return backend, ds_config


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg``; ``resume`` continues the run in ``cfg.out_dir``, ``overwrite`` moves a
    run found there aside (``<out_dir>.old-<time>``) first. Without either, an ``out_dir``
    that holds a run is a :class:`~fastlam.run_folder.RunFolderError`."""
    backend, ds_config = check_run(cfg, resume=resume, overwrite=overwrite)
    # Every rank checks the folder before the process group forms (so before rank 0 writes).
    moved = run_folder.prepare_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite,
                                       is_main=int(os.environ.get("RANK", "0") or 0) == 0)
    if moved is not None:
        print(f"--overwrite: moved the previous run in {cfg.out_dir} to {moved.resolve()}")
    if int(os.environ.get("RANK", "0") or 0) == 0:
        # First, before any slow set-up: where to look while the run goes on.
        print(f"run folder: {Path(cfg.out_dir).resolve()} ({'resuming' if resume else 'new run'})", flush=True)
    env = fdist.init_process_group(cfg.distributed, backend)
    try:
        summary = _train(cfg, env, resume, ds_config)
    except BaseException:
        fdist.shutdown(env, clean=False)
        raise
    fdist.shutdown(env)
    return summary


def _train(cfg: TrainConfig, env: fdist.DistEnv, resume: bool, ds_config: dict | None) -> dict:
    out = Path(cfg.out_dir).resolve()  # every path the run reports is absolute
    ckpt_dir = out / "checkpoints"
    device = resolve_device(cfg.device)
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
    torch.manual_seed(cfg.seed)

    try:
        dataset = build_dataset(cfg)  # fails early (empty folder, unreadable files) before any work
    except ValueError as e:
        raise ConfigError(f"data.source: {e}") from None
    if not use_dali(cfg, device) and hasattr(dataset, "__len__") and len(dataset) < cfg.batch_size:
        raise ConfigError(f"batch_size: expected at most the dataset's {len(dataset)} clips, got {cfg.batch_size}")
    model = LatentActionWorldModel(cfg.model)
    if cfg.model.encoder.checkpoint:
        try:
            load_vjepa2_encoder(model.encoder, cfg.model.encoder.checkpoint)
        except (ValueError, KeyError) as e:  # weights of another shape or layout: a config mistake
            raise ConfigError(f"model.encoder.checkpoint: {cfg.model.encoder.checkpoint} does not fit "
                              f"model.encoder ({type(e).__name__}: {one_line(e)})") from None
    model.predictor.checkpoint_blocks = cfg.activation_checkpointing
    model.check_video_range = False  # the loaders give [0, 1] by construction: no per-step host sync
    model.to(device).train()
    if isinstance(dataset, StateStream):
        if env.backend == "deepspeed":
            raise ConfigError("data.source: training from a state store runs with the local runner "
                              "(single process or DDP), not DeepSpeed yet")
        check_state_store(dataset, model, cfg)
    if env.world_size > 1:
        # Same weights on every rank (seeded above), but each rank's own noise stream.
        torch.manual_seed(cfg.seed + 1_000_003 * env.rank)
    if env.backend == "deepspeed":
        runner = fdist.DeepSpeedRunner(model, cfg, env, device, ds_config)
    else:
        runner = _LocalRunner(model, cfg, env, device)

    step, position = 0, 0
    if resume and not run_folder.has_checkpoint(out):  # let through by check_out_dir: see there
        if env.is_main:
            print(f"--resume: no checkpoint in {ckpt_dir} was completed; starting from step 0")
    elif resume:
        state = runner.load(ckpt_dir)
        step, position = int(state["step"]), int(state["data_position"])
        _set_rng_state(state["rng"])
        if step > cfg.steps:
            raise ConfigError(f"steps: the run in {out} is at step {step} already; pass steps=N with N >= {step} "
                              "to continue it")
        if env.is_main:
            print(f"resumed from {ckpt_dir / state['tag']} at step {step}")

    shards = isinstance(dataset, ShardStream)
    data_state = load_stream_state(ckpt_dir, step) if shards and resume else None
    metrics_file = out / "metrics.jsonl"
    if env.is_main:  # the config is valid and the model built: now the run folder may be written
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if resume:
            run_folder.truncate_metrics(metrics_file, step)
    batches = iter_batches(cfg, dataset, device, env, position, data_state)
    model_config = json.dumps(to_dict(cfg.model))

    def checkpoint(at_step: int) -> Path:
        # Data state, then the model checkpoint (which moves latest), then pruning: a kill at any
        # point leaves latest naming a step whose data state is on disk (fastlam.data.stream_state).
        if shards:  # collective: every rank's consumed clips, merged (any world size resumes)
            live = getattr(dataset, "loader_state", None)  # None before the first batch
            merged = merge_states(fdist.all_gather_objects(env, live() if live else data_state))
            if env.is_main and merged is not None:
                save_stream_state(ckpt_dir, at_step, merged)
        path = runner.save(ckpt_dir, at_step, position, {"rng": _rng_state(), "model_config": model_config},
                           cfg.keep_checkpoints)
        if shards and env.is_main:
            prune_stream_states(ckpt_dir, cfg.keep_checkpoints, at_step)
        return path


    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and env.is_main), mininterval=2.0, file=sys.stdout)
    speed = fdist.Throughput(model, device, env.world_size)
    # Muon's Newton-Schulz FLOPs per optimizer step on each process (each orthogonalises every
    # matrix), reported beside the model's MFU, not inside it, and as a share of the model FLOPs
    # one process computes per step. (The DeepSpeed runner's optimizer lives in its engine: not counted.)
    muon_flops = muon_step_flops(getattr(runner, "opts", []))
    muon_share = muon_flops * env.world_size / (speed.flops_per_clip * cfg.batch_size)
    first, last, preempted, measured = None, None, False, False
    nonfinite = NonFiniteWindow()
    log = metrics_file.open("a") if env.is_main else None
    dash = Dashboard(cfg.logging, out, to_dict(cfg), enabled=env.is_main, log_every=cfg.log_every)
    diag = _diagnostics(cfg, env)
    try:
        with fdist.StopFlag() as stop:
            while step < cfg.steps:
                with speed.waiting():
                    video = next(batches)
                position += 1
                if not isinstance(dataset, StateStream):  # the dashboard's strips draw video
                    dash.remember_clip(video)
                last = runner.train_step(video.to(device, non_blocking=True))
                nonfinite.add(last.finite, step + 1)
                first = last if first is None else first
                step += 1
                speed.add(cfg.batch_size)
                stop_now = stop.requested
                # Step 1 is always logged: the run's first loss stays on record across resumes.
                at_log = step % cfg.log_every == 0 or step in (1, cfg.steps)
                at_ckpt = step % cfg.ckpt_every == 0 and step < cfg.steps
                if env.distributed:
                    # Ranks must agree on stopping at the same step: one collective per step
                    # (a single float; DDP runs synchronise in every backward anyway).
                    stop_now = fdist.all_reduce_sum(env, [float(stop_now)])[0] > 0
                if at_log or at_ckpt or stop_now:
                    nonfinite.check(step, ckpt_dir)  # the only host sync of a step, every log_every
                if (log is not None or env.distributed) and (at_log or stop_now):
                    sums, metrics, grad_norm = last.read()
                    if env.distributed:
                        # The global batch's mean losses for rank 0's log (every rank joins).
                        keys = sorted(metrics)
                        red = fdist.all_reduce_sum(env, sums + [metrics[k] for k in keys])
                        sums = [v / env.world_size for v in red[:3]]
                        metrics = {k: v / env.world_size for k, v in zip(keys, red[3:])}
                if log is not None and (at_log or stop_now):
                    rates = speed.window()
                    row = {"step": step, "loss": sums[0], "pred_loss": sums[1], "reg_loss": sums[2],
                           "grad_norm": grad_norm, **rates, "lr": runner.lrs}
                    if "mfu" in rates and muon_flops:  # steps/s x Muon FLOPs per step / one device's peak
                        row["muon_mfu"] = rates["clips_per_s"] / cfg.batch_size * muon_flops / speed.peak
                    row.update(metrics)
                    if hasattr(dataset, "bad_files"):
                        row["bad_files"] = len(dataset.bad_files)
                    if diag is not None:
                        with speed.paused():
                            row.update(diag(model))
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    dash.scalars(step, row)
                    bar.set_postfix(loss=f"{sums[0]:.4f}", clips_s=f"{rates['clips_per_s']:.1f}",
                                    **(progress_postfix(row) if diag is not None else {}))
                bar.update(1)
                with speed.paused():
                    dash.strip(step, model)
                    if env.backend == "deepspeed" and not measured:
                        _write_memory(out, env, runner)  # collective: every rank, once
                        measured = True
                if stop_now:
                    preempted = True
                    break
                if at_ckpt:
                    with speed.paused():
                        checkpoint(step)
    finally:
        if log is not None:
            log.close()
        dash.close()
    nonfinite.check(step, ckpt_dir)
    first_loss = first.read()[0][0] if first is not None else None
    last_loss = last.read()[0][0] if last is not None else None
    bar.close()
    final_ckpt = checkpoint(step)
    summary = {"steps": step, "first_loss": first_loss, "last_loss": last_loss, "checkpoint": str(final_ckpt),
               "model": None, "loss_curve": None, "device": str(device), "backend": env.backend,
               "world_size": env.world_size, "preempted": preempted, "muon_flops_per_step": muon_flops,
               "muon_flops_share": muon_share}
    if preempted:
        if env.is_main:
            print(f"\nstopped by signal at step {step}: checkpoint {final_ckpt} (continue with --resume)")
    else:
        final_dir = runner.export(ckpt_dir, Path(final_ckpt).name, out / "final")
        summary["model"] = str(final_dir) if final_dir else None
    if env.is_main:
        # A resumed run reports the whole run's first loss (and, when it had no step left to
        # train, its last), not the first of this process.
        rows = [r for r in run_folder.read_metrics(metrics_file) if "loss" in r]
        if rows:
            summary["first_loss"] = rows[0]["loss"]
            summary["last_loss"] = last_loss if last_loss is not None else rows[-1]["loss"]
        png = plot_losses(metrics_file, out / "loss_curve.png")
        summary["loss_curve"] = str(png) if png else None
        if hasattr(dataset, "report"):
            summary["data_report"] = dataset.report()
            summary["bad_inputs"] = len(dataset.bad_files)  # skipped, each listed in data_report
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _diagnostics(cfg: TrainConfig, env: fdist.DistEnv):
    """The latent-use diagnostics (fastlam.diagnostics) on rank 0, or None: off when
    ``diagnostics_clips`` is 0 and under DeepSpeed (ZeRO-3 shards the weights rank 0 would need)."""
    if cfg.diagnostics_clips < 0:
        raise ConfigError(f"diagnostics_clips: expected an int >= 0, got {cfg.diagnostics_clips}")
    if not env.is_main or cfg.diagnostics_clips == 0 or env.backend == "deepspeed":
        return None
    if is_state_store(cfg.data.source):
        print("diagnostics off: a state store holds encoder states, not the video clips they need")
        return None

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
