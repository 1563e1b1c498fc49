"""The process group a launcher describes: which backend runs, joining and leaving the group,
and the few collectives the trainer needs (each a no-op in a single process)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..configs import BACKENDS, ENCODER_PLACEMENTS, DistributedConfig


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
    """``auto`` picks ``deepspeed`` when a ZeRO config is set, else ``ddp`` when the launcher
    started more than one process (``WORLD_SIZE`` > 1), else ``none``."""
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


def import_deepspeed() -> None:
    """Import DeepSpeed, or say how to install it (a ConfigError: the config asked for it)."""
    # Without a GPU DeepSpeed must be told to use its CPU accelerator before it is imported.
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401  # optional dependency: DeepSpeed (pip install -e '.[dist]')
    except ImportError as e:
        raise ConfigError("distributed.backend=deepspeed needs DeepSpeed: "
                          "DS_BUILD_OPS=0 pip install 'deepspeed==0.19.8' (or pip install -e '.[dist]')") from e


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
            import_deepspeed()
            import deepspeed  # optional dependency: DeepSpeed (imported just above, or a ConfigError)

            deepspeed.init_distributed(dist_backend=pg_backend, timeout=timeout)
        else:
            dist.init_process_group(pg_backend, timeout=timeout)
    return env


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
