"""Data-parallel training: the process group, and DeepSpeed ZeRO behind the trainer's loop.

``fastlam/train.py`` is the one training entry point. It runs as a single process, under
``torchrun`` (DDP) and under the ``deepspeed`` launcher; this package holds what only a
multi-process run needs, so the single-process path imports nothing from DeepSpeed. One
concern a module:

- ``process_group``: which backend runs (``distributed.backend``: ``auto`` picks ``deepspeed``
  when ``distributed.deepspeed_config`` is set, else ``ddp`` when a launcher started more than
  one process, else ``none``), joining and leaving the group, the collectives.
- ``preemption``: SIGTERM asks the loop to checkpoint and stop.
- ``deepspeed_config``: the ZeRO JSON config, its ``"auto"`` values filled from the training config.
- ``preflight``: every check that can fail on the configuration alone, before anything starts.
- ``muon``: DeepSpeed's Muon over fastlam's parameter split, compiled per matrix shape.
- ``encoder_placement``: the frozen encoder replicated outside the engine, or sharded inside it.
- ``engine``: the DeepSpeed engine's training step, checkpoints and export (``DeepSpeedRunner``).
- ``checkpoints``: tag folders, per-rank state, and the ``latest`` file that publishes a tag.
- ``export``: a checkpoint's ZeRO shards merged into the weights ``from_checkpoint`` loads.
- ``memory``: the bytes one rank holds. ``throughput``: clips/s, tokens/s, MFU of the whole job.
- ``cli`` (``python -m fastlam.distributed export``).

The names below are the package's public surface (``fastlam.trainer`` uses them as ``fdist.*``).
"""
from __future__ import annotations

# tests/test_train.py patches fastlam.distributed.time.perf_counter: the clock Throughput reads.
import time  # noqa: F401

from ..configs import BACKENDS, ENCODER_PLACEMENTS, DistributedConfig
from .checkpoints import ENCODER_FILE, LATEST, STATE_FILE, read_latest
from .cli import build_parser, main
from .deepspeed_config import build_deepspeed_config, check_batch_split
from .encoder_placement import TrainablePart
from .engine import DeepSpeedRunner
from .export import export_consolidated
from .memory import rank_memory, tensor_bytes
from .muon import build_deepspeed_muon, static_shape_compiles
from .preemption import StopFlag
from .preflight import check_launch, preflight
from .process_group import (DistEnv, all_gather_objects, all_reduce_sum, barrier, import_deepspeed,
                            init_process_group, resolve_backend, shutdown)
from .throughput import Throughput, peak_flops, train_flops_per_clip

__all__ = [
    "BACKENDS", "ENCODER_PLACEMENTS", "DistributedConfig", "ENCODER_FILE", "LATEST", "STATE_FILE", "read_latest",
    "build_parser", "main", "build_deepspeed_config", "check_batch_split", "TrainablePart", "DeepSpeedRunner",
    "export_consolidated", "rank_memory", "tensor_bytes", "build_deepspeed_muon", "static_shape_compiles",
    "StopFlag", "check_launch", "preflight", "DistEnv", "all_gather_objects", "all_reduce_sum", "barrier",
    "import_deepspeed", "init_process_group", "resolve_backend", "shutdown", "Throughput", "peak_flops",
    "train_flops_per_clip",
]
