"""Data-parallel training: the process group, and DeepSpeed ZeRO behind the trainer's loop.

``fastlam/train.py`` is the one training entry point. It runs as a single process, under
``torchrun`` (DDP) and under the ``deepspeed`` launcher; this module holds what only a
multi-process run needs, so the single-process path imports nothing from DeepSpeed.

Backend selection (``distributed.backend``): ``auto`` picks ``deepspeed`` when
``distributed.deepspeed_config`` is set, else ``ddp`` when a launcher started more than one
process (``WORLD_SIZE`` > 1), else ``none``.

The DeepSpeed backend:

- The optimizer is DeepSpeed's own Muon (``MuonWithAuxAdam``), given to the engine as a client
  optimizer with fastlam's parameter split (``fastlam.optim.is_hidden_matrix``: Muon for the 2-D
  weights inside transformer blocks, AdamW for the rest). DeepSpeed's config route would re-tag
  parameters by its own rule (every 2-D tensor that is not an embedding), which would put e.g.
  the VQ codebook and the predictor's output head under Muon. ZeRO 1/2/3 recognise the optimizer
  by type and orthogonalise each full matrix before it is sharded.
- Gradient clipping: DeepSpeed 0.19.8 orthogonalises Muon gradients before it computes the
  global norm, so its ``gradient_clipping`` would clip the Muon *updates*. With Muon on,
  ``optim.grad_clip`` is therefore not applied (a note is printed); with ``optim.use_muon:
  false`` it is DeepSpeed's ordinary clip of the raw gradients. The logged ``grad_norm`` is the
  norm DeepSpeed computes (Muon parameters contribute their orthogonalised update).
- ZeRO-3 with Muon needs ``reduce_scatter: false`` (DeepSpeed refuses the combination).
- The JSON config (``configs/deepspeed/zero*.json``) carries the ZeRO settings; the values that
  the training config already fixes (batch sizes, gradient accumulation, bf16, gradient
  clipping) are ``"auto"`` there and filled in here, and an explicit value that contradicts the
  training config is an error before anything starts.
- The frozen encoder is either *replicated* (kept out of the engine, run in eval mode under
  ``no_grad`` on every rank) or *sharded* (inside the engine, so ZeRO-3 partitions its weights;
  it is frozen, so it has no gradients and no optimizer state in either case).
- Checkpoints are DeepSpeed checkpoint directories ``checkpoints/step_XXXXXXX/`` plus
  fastlam's per-rank state (RNG) and, written last by rank 0, ``fastlam_state.pt`` (step, data
  position, world size). Only then is ``checkpoints/latest`` replaced, atomically: a crash at
  any point before leaves ``latest`` naming the previous complete checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import atomic_write, load_checkpoint, save_checkpoint
from .config import ConfigError
from .inputs import output_folder, read_json, require_folder
from .configs import BACKENDS, ENCODER_PLACEMENTS, DistributedConfig
from .optim import OptimConfig, is_hidden_matrix, warmup_cosine

STATE_FILE = "fastlam_state.pt"  # written last into a DeepSpeed tag directory: marks it complete
LATEST = "latest"
ENCODER_FILE = "encoder.pt"  # the replicated encoder's weights, beside the ZeRO shards


# ---- process group -----------------------------------------------------------------------
@dataclass
class DistEnv:
    backend: str  # none | ddp | deepspeed
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend != "none"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def resolve_backend(cfg: DistributedConfig) -> str:
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"distributed.backend: expected one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.encoder not in ENCODER_PLACEMENTS:
        raise ConfigError(f"distributed.encoder: expected one of {ENCODER_PLACEMENTS}, got {cfg.encoder!r}")
    if cfg.muon_ns_method not in ("standard", "gram"):
        raise ConfigError(f"distributed.muon_ns_method: expected standard or gram, got {cfg.muon_ns_method!r}")
    world = _env_int("WORLD_SIZE", 1)
    backend = cfg.backend
    if backend == "auto":
        backend = "deepspeed" if cfg.deepspeed_config else ("ddp" if world > 1 else "none")
    if backend == "none" and world > 1:
        raise ConfigError(f"distributed.backend: 'none' but the launcher started WORLD_SIZE={world} processes; "
                          "use ddp or deepspeed (or auto)")
    if backend == "deepspeed" and not cfg.deepspeed_config:
        raise ConfigError("distributed.deepspeed_config: backend 'deepspeed' needs a ZeRO config file "
                          "(e.g. configs/deepspeed/zero2.json)")
    return backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(cfg: DistributedConfig, backend: str) -> DistEnv:
    """Join (or, for a lone process, create) the process group the launcher describes."""
    if backend == "none":
        return DistEnv("none")
    # A DeepSpeed or DDP run started with plain `python` is a world of one.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    env = DistEnv(backend, _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    pg_backend = cfg.dist_backend
    if pg_backend == "auto":
        pg_backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        timeout = timedelta(minutes=cfg.timeout_min)
        if backend == "deepspeed":
            _import_deepspeed()
            import deepspeed

            deepspeed.init_distributed(dist_backend=pg_backend, timeout=timeout)
        else:
            dist.init_process_group(pg_backend, timeout=timeout)
    return env


def _import_deepspeed():
    # Without a GPU DeepSpeed must be told to use its CPU accelerator before it is imported.
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise ConfigError("distributed.backend=deepspeed needs DeepSpeed: "
                          "DS_BUILD_OPS=0 pip install 'deepspeed==0.19.8' (or pip install -e '.[dist]')") from e


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(env: DistEnv, values: list[float]) -> list[float]:
    if not env.distributed or env.world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_objects(env: DistEnv, obj) -> list:
    if not env.distributed or env.world_size == 1:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(env: DistEnv, clean: bool = True) -> None:
    """Leave the process group; after an error no barrier (the other ranks may never arrive)."""
    if env.distributed and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


# ---- preemption ----------------------------------------------------------------------------
class StopFlag:
    """Set by SIGTERM (what Slurm and Kubernetes send before killing a job): the loop finishes
    the step it is in, saves a checkpoint and returns. The previous handler is restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM,):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, plain behaviour
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def requested(self) -> bool:
        return self.signum is not None


# ---- data split ------------------------------------------------------------------------------
def check_batch_split(batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Micro-batch per rank; the global batch must split evenly or training does not start."""
    if grad_accum_steps < 1:
        raise ConfigError(f"grad_accum_steps: expected an int >= 1, got {grad_accum_steps}")
    if batch_size % (world_size * grad_accum_steps):
        raise ConfigError(
            f"batch_size={batch_size} (the global batch per optimizer step) is not divisible by "
            f"world_size ({world_size}) x grad_accum_steps ({grad_accum_steps})")
    return batch_size // (world_size * grad_accum_steps)


# ---- DeepSpeed config ----------------------------------------------------------------------
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


def preflight(train_cfg, backend: str, world_size: int, device_type: str) -> dict | None:
    """Every check that can fail on the configuration alone, before a process group, a model
    or data exist. Returns the resolved DeepSpeed config for the deepspeed backend."""
    check_batch_split(train_cfg.batch_size, world_size, train_cfg.grad_accum_steps)
    if backend != "deepspeed":
        if train_cfg.distributed.encoder == "sharded":
            raise ConfigError("distributed.encoder=sharded needs the deepspeed backend with ZeRO stage 3")
        return None
    want_bf16 = train_cfg.precision == "bf16" or (train_cfg.precision == "auto" and device_type == "cuda")
    clip = train_cfg.optim.grad_clip if train_cfg.optim.grad_clip > 0 else 0.0
    if clip and train_cfg.optim.use_muon:
        # DeepSpeed orthogonalises the Muon gradients *before* it takes the global norm, so its
        # clipping would scale the Muon updates themselves (norm ~ sqrt(rank) per matrix, far
        # above any usual threshold): a silent cut of Muon's learning rate. Muon's update has a
        # fixed scale whatever the gradient's size, so the raw-gradient clip of the
        # single-process recipe only matters in a spike; here it is off.
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"note: optim.grad_clip={clip} is not applied under DeepSpeed with Muon "
                  "(DeepSpeed would clip the orthogonalised updates); see fastlam/distributed.py")
        clip = 0.0
    ds = build_deepspeed_config(train_cfg.distributed.deepspeed_config, batch_size=train_cfg.batch_size,
                                world_size=world_size, grad_accum_steps=train_cfg.grad_accum_steps, bf16=want_bf16,
                                precision=train_cfg.precision, grad_clip=clip)
    stage = ds["zero_optimization"].get("stage", 0)
    if train_cfg.distributed.encoder == "sharded" and stage != 3:
        raise ConfigError(f"distributed.encoder=sharded needs ZeRO stage 3 ({train_cfg.distributed.deepspeed_config} "
                          f"sets stage {stage}); use encoder: replicated")
    return ds


# ---- optimizer -----------------------------------------------------------------------------
def build_deepspeed_muon(model: nn.Module, cfg: OptimConfig, ns_method: str, momentum: float):
    """DeepSpeed's MuonWithAuxAdam over fastlam's split: tags ``param.use_muon`` and returns the
    optimizer (to be handed to ``deepspeed.initialize`` as a client optimizer)."""
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    muon, adamw = [], []
    for name, p in model.named_parameters():
        p.use_muon = bool(cfg.use_muon and p.requires_grad and is_hidden_matrix(name, p))
        if p.requires_grad:
            (muon if p.use_muon else adamw).append(p)
    groups = []
    if muon:
        groups.append(dict(params=muon, use_muon=True, lr=cfg.muon_lr, momentum=momentum,
                           weight_decay=cfg.weight_decay, ns_method=ns_method))
    if adamw:
        groups.append(dict(params=adamw, use_muon=False, lr=cfg.adamw_lr, betas=tuple(cfg.adamw_betas),
                           eps=1e-8, weight_decay=cfg.weight_decay))
    return MuonWithAuxAdam(groups)


def static_shape_compiles():
    """Compile DeepSpeed's Muon (``muon_update``, Newton-Schulz: ``torch.compile``d functions)
    for each matrix shape separately, never with dynamic shapes.

    By default the second shape a compiled function sees recompiles it for dynamic shapes, and
    every later call runs that kernel; the very first call ran a kernel specialised to its
    shape, which rounds differently. So the first optimizer step of a process computes one
    Muon update differently from any later step: a run resumed in a fresh process (its first
    step is the original's step k+1) left the uninterrupted one after one step. With one
    static kernel per shape the numbers no longer depend on what the process ran before.
    (DeepSpeed orthogonalises in ``engine.step`` under ZeRO-3 and while reducing gradients
    under ZeRO-1/2, hence around both.)"""
    import torch._dynamo

    return torch._dynamo.config.patch(automatic_dynamic_shapes=False)


class TrainablePart(nn.Module):
    """The LAM without its frozen encoder, for an engine that must not own (or cast, or shard)
    the encoder: its submodules are the LAM's own, so the LAM's forward on cached ``states``
    runs through them and DeepSpeed's hooks on them."""

    def __init__(self, lam: nn.Module):
        super().__init__()
        for name, child in lam.named_children():
            if name != "encoder":
                self.add_module(name, child)
        self._lam = [lam]  # a list: not registered, so the encoder stays out of parameters()

    def forward(self, states: torch.Tensor):
        return self._lam[0](states=states)


# ---- the engine ------------------------------------------------------------------------------
class DeepSpeedRunner:
    """One optimizer step of DeepSpeed ZeRO on this rank's share of a global batch, plus its
    checkpoints and the consolidated export."""

    def __init__(self, model: nn.Module, train_cfg, env: DistEnv, device: torch.device, ds_config: dict):
        _import_deepspeed()
        import deepspeed

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
        self._grads_measured: int | None = None
        if not self.encoder_sharded:
            model.encoder.to(device)

    @property
    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups][:2]

    def train_step(self, video: torch.Tensor):
        """``video``: this rank's share of the global batch; returns the mean of the micro-batch
        outputs and the global grad norm as a :class:`fastlam.step_metrics.StepMetrics` (device
        tensors: no host sync per micro-batch)."""
        from fastlam.step_metrics import StepMetrics

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
        tag = f"step_{step:07d}"
        tag_dir = ckpt_dir / tag
        latest = ckpt_dir / LATEST
        if latest.is_file() and latest.read_text().strip() == tag and (tag_dir / STATE_FILE).is_file():
            return tag_dir  # resumed at this very step: the published checkpoint is this state
        if self.env.is_main and tag_dir.exists():
            shutil.rmtree(tag_dir)  # a leftover of a crash mid-save at this step: never published
        barrier(self.env)
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
        save_checkpoint(tag_dir / f"fastlam_rank{self.env.rank:05d}.pt", {"rng": extra["rng"]})
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
        if not self.env.is_main:
            return
        save_checkpoint(ckpt_dir / tag / STATE_FILE, state)
        atomic_write(ckpt_dir / LATEST, lambda p: p.write_text(tag + "\n"))
        tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file())
        for old in tags[:-keep] if keep > 0 else []:
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, ckpt_dir: Path) -> dict:
        """Restore engine (model, optimizer, scheduler) and this rank's RNG from ``latest``;
        returns fastlam's state (step, data_position). Errors name what is missing."""
        tag, state = read_latest(ckpt_dir)
        if int(state["world_size"]) != self.env.world_size:
            raise ValueError(f"--resume: {ckpt_dir / tag} was written by {state['world_size']} ranks, this run has "
                             f"{self.env.world_size}; ZeRO shards only reload at the same world size (export "
                             "the consolidated weights to change it)")
        if int(state["zero_stage"]) != self.stage:
            raise ValueError(f"--resume: {ckpt_dir / tag} is a ZeRO stage {state['zero_stage']} checkpoint, the "
                             f"config asks for stage {self.stage}")
        try:
            path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except Exception as e:  # a truncated or foreign file: say which checkpoint, keep the cause
            raise ValueError(f"--resume: the checkpoint {ckpt_dir / tag} could not be loaded ({type(e).__name__}: {e})") from e
        if path is None:
            raise ValueError(f"--resume: DeepSpeed found no loadable checkpoint in {ckpt_dir / tag}")
        rank_state = load_checkpoint(ckpt_dir / tag / f"fastlam_rank{self.env.rank:05d}.pt")
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


def read_latest(ckpt_dir: Path, name: str = "--resume") -> tuple[str, dict]:
    """(tag, fastlam state) of the checkpoint DeepSpeed's ``latest`` file names; errors start
    with ``name``, the argument that led here."""
    latest = ckpt_dir / LATEST
    if not latest.is_file():
        raise FileNotFoundError(f"{name}: no DeepSpeed checkpoint: {latest} does not exist")
    tag = latest.read_text(errors="replace").strip()  # a binary file names no tag: reported below
    state_file = ckpt_dir / tag / STATE_FILE
    if not tag or not state_file.is_file():
        raise FileNotFoundError(f"{name}: {latest} names {tag[:80]!r}, which has no {STATE_FILE} (incomplete or deleted)")
    try:
        state = load_checkpoint(state_file)
    except Exception as e:
        raise ValueError(f"{name}: {state_file} is corrupt ({type(e).__name__}: {e})") from e
    return tag, state


def export_consolidated(tag_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a ZeRO checkpoint's shards into fp32 weights and write ``config.json`` +
    ``model.safetensors`` (``LatentActionWorldModel.from_checkpoint(out_dir)``). Runs in one
    process on CPU, without a process group: ``python -m fastlam.distributed export TAG_DIR OUT``."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .config import from_dict
    from .models import LatentActionWorldModel, ModelConfig

    tag_dir = Path(tag_dir)
    if not (tag_dir / STATE_FILE).is_file():
        raise FileNotFoundError(f"export: {tag_dir} is not a complete fastlam DeepSpeed checkpoint (no {STATE_FILE})")
    state = load_checkpoint(tag_dir / STATE_FILE)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    if (tag_dir / ENCODER_FILE).is_file():
        weights.update({f"encoder.{k}": v.float() for k, v in load_checkpoint(tag_dir / ENCODER_FILE).items()})
    cfg = from_dict(ModelConfig, json.loads(state["model_config"]))
    cfg.encoder.checkpoint = None
    model = LatentActionWorldModel(cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"export: {tag_dir} does not match its model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.save_pretrained(out_dir)


# ---- memory -------------------------------------------------------------------------------
def tensor_bytes(obj, seen: set, depth: int = 0) -> int:
    """Bytes of the tensor storages in ``obj`` (a tensor, or dicts / lists / tuples of them nested at most
    five deep) whose (storage, device) key is not yet in ``seen``; adds the keys it counts."""
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "meta" or obj.numel() == 0:
            return 0
        key = (obj.untyped_storage().data_ptr(), obj.device)
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if depth > 4:
        return 0
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    return 0


def rank_memory(engine, extra_modules: tuple[nn.Module, ...] = ()) -> dict:
    """Bytes this rank holds, measured by walking its tensors (storages counted once): model
    weights as they rest between steps (ZeRO-3: the local partition; ``extra_modules``: weights
    kept outside the engine, i.e. the replicated encoder), gradients (including ZeRO's gradient
    partitions and reduction buckets) and optimizer state (fp32 master copies, Adam moments,
    Muon momentum), the largest holders by name, and the process's peak RSS."""
    import resource

    seen: set = set()
    params = 0
    for module in (engine.module, *extra_modules):
        for p in module.parameters():
            params += tensor_bytes(p.ds_tensor if hasattr(p, "ds_tensor") else p.data, seen)
    grads = sum(tensor_bytes(p.grad, seen) for p in engine.module.parameters() if p.grad is not None)
    opt = engine.optimizer
    detail = {"param.grad": grads}
    optim = tensor_bytes(getattr(opt, "state", {}), seen)
    inner = getattr(opt, "optimizer", None)
    if inner is not None:
        optim += tensor_bytes(dict(inner.state), seen)
    detail["optimizer.state"] = optim
    # ZeRO keeps its fp32 partitions, flat buffers, gradient partitions and buckets as attributes.
    for name, value in vars(opt).items():
        b = tensor_bytes(value, seen)
        if not b:
            continue
        detail[name] = b
        if "grad" in name or "ipg" in name or "bucket" in name:
            grads += b
        else:
            optim += b
    top = dict(sorted(detail.items(), key=lambda kv: -kv[1])[:8])
    return {"params_bytes": params, "grads_bytes": grads, "optim_bytes": optim, "largest": top,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ---- throughput -----------------------------------------------------------------------------
def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 datasheet peak of this CUDA device by its exact name (fastlam.flops), else None."""
    if device.type != "cuda":
        return None
    from fastlam.flops import datasheet_bf16_peak

    return datasheet_bf16_peak(torch.cuda.get_device_name(device))


def train_flops_per_clip(model: nn.Module) -> float:
    """Model FLOPs of one training clip (video in: frozen encoder forward + 3 x IDM and
    predictor forward), the FLOP model of fastlam.flops that the benchmarks use too."""
    from fastlam.flops import lam_train_flops_per_clip

    return lam_train_flops_per_clip(model, with_encoder=True)


class Throughput:
    """clips/s, tokens/s and (on GPUs with a known peak) MFU over the last logging window,
    for the whole job (all ranks).

    What the rates include: the training loop's own time, waiting for data and the steps
    themselves; what they exclude: the work the loop does besides training (diagnostics,
    checkpoints, dashboard images), timed inside :meth:`paused`. Without that exclusion a
    window that followed a checkpoint or a diagnostics pass read far lower than its neighbours,
    and one whose batches had queued up meanwhile far higher. ``data_wait_frac`` is the share
    of the window spent waiting for the next batch (:meth:`waiting`): near 1, the input
    pipeline, not the model, sets the pace."""

    def __init__(self, model: nn.Module, device: torch.device, world_size: int):
        cfg = model.cfg
        self.tokens_per_clip = (cfg.frames // cfg.encoder.tubelet) * (cfg.image_size // cfg.encoder.patch_size) ** 2
        self.flops_per_clip = train_flops_per_clip(model)
        self.peak = peak_flops(device)
        self.world_size = world_size
        self.t, self.clips, self.excluded, self.waited = time.perf_counter(), 0, 0.0, 0.0

    def add(self, clips: int) -> None:
        self.clips += clips

    @contextlib.contextmanager
    def _timed(self, total: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, total, getattr(self, total) + time.perf_counter() - t0)

    def paused(self):
        """Time spent in this block is not training time: it counts in no rate."""
        return self._timed("excluded")

    def waiting(self):
        """Time spent in this block is waiting for data: counted, and reported as a share."""
        return self._timed("waited")

    def window(self) -> dict:
        now = time.perf_counter()
        span = max(now - self.t - self.excluded, 1e-9)
        rate = self.clips / span
        row = {"clips_per_s": rate, "tokens_per_s": rate * self.tokens_per_clip,
               "data_wait_frac": min(self.waited / span, 1.0)}
        self.t, self.clips, self.excluded, self.waited = now, 0, 0.0, 0.0
        if self.peak is not None:
            row["mfu"] = rate * self.flops_per_clip / (self.peak * self.world_size)
        return row


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fastlam.distributed",
                                 description="Tools for DeepSpeed checkpoints written by fastlam.train")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{export}",
                            help="export: consolidated fp32 weights of a DeepSpeed checkpoint")
    ex = sub.add_parser("export", help="consolidated fp32 weights of a checkpoint, for from_checkpoint")
    ex.add_argument("checkpoint", help="a tag directory (runs/x/checkpoints/step_0000100) or the checkpoints "
                                       "directory (its latest tag is used)")
    ex.add_argument("out", help="output directory (config.json + model.safetensors)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        path = require_folder(args.checkpoint, "checkpoint",
                              "a DeepSpeed tag folder (RUN/checkpoints/step_NNNNNNN) or the checkpoints folder "
                              "holding 'latest'")
        output_folder(args.out, "out")
        if (path / LATEST).is_file():
            path = path / read_latest(path, "checkpoint")[0]
        _import_deepspeed()
        print(export_consolidated(path, args.out))
    # InputError, CheckpointError and ConfigError (DeepSpeed missing) are ValueErrors.
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
