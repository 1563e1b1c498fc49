"""DeepSpeed checkpoint folders as fastlam writes them, and the ``latest`` file that publishes one.

A checkpoint is DeepSpeed's tag folder ``checkpoints/step_XXXXXXX/`` plus fastlam's per-rank
state (RNG), the replicated encoder's weights and, written last by rank 0, ``fastlam_state.pt``
(step, data position, world size). Only then is ``checkpoints/latest`` replaced, atomically: a
crash at any point before leaves ``latest`` naming the previous complete checkpoint.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..checkpoint import atomic_write, load_checkpoint, save_checkpoint

STATE_FILE = "fastlam_state.pt"  # written last into a DeepSpeed tag directory: marks it complete
LATEST = "latest"
ENCODER_FILE = "encoder.pt"  # the replicated encoder's weights, beside the ZeRO shards


def tag_name(step: int) -> str:
    return f"step_{step:07d}"


def rank_state_file(tag_dir: Path, rank: int) -> Path:
    """Where one rank's own state (its RNG) goes in a tag folder."""
    return tag_dir / f"fastlam_rank{rank:05d}.pt"


def is_published(ckpt_dir: Path, tag: str) -> bool:
    """``latest`` names ``tag`` and the tag is complete (a run resumed at this very step)."""
    latest = ckpt_dir / LATEST
    return latest.is_file() and latest.read_text().strip() == tag and (ckpt_dir / tag / STATE_FILE).is_file()


def publish(ckpt_dir: Path, tag: str, state: dict, keep: int) -> None:
    """Rank 0, once every rank has written its part of ``tag``: mark it complete, point
    ``latest`` at it, and delete complete tags beyond the newest ``keep`` (``keep`` <= 0: none)."""
    save_checkpoint(ckpt_dir / tag / STATE_FILE, state)
    atomic_write(ckpt_dir / LATEST, lambda p: p.write_text(tag + "\n"))
    tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file())
    for old in tags[:-keep] if keep > 0 else []:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


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


def check_resumable(tag_dir: Path, state: dict, world_size: int, zero_stage: int) -> None:
    """ZeRO shards reload only into the world size and stage that wrote them."""
    if int(state["world_size"]) != world_size:
        raise ValueError(f"--resume: {tag_dir} was written by {state['world_size']} ranks, this run has "
                         f"{world_size}; ZeRO shards only reload at the same world size (export "
                         "the consolidated weights to change it)")
    if int(state["zero_stage"]) != zero_stage:
        raise ValueError(f"--resume: {tag_dir} is a ZeRO stage {state['zero_stage']} checkpoint, the "
                         f"config asks for stage {zero_stage}")
