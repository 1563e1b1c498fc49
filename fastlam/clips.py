"""Fixed clips shaped for a model config: the held-out batches of the training diagnostics
(:mod:`fastlam.diagnostics`) and of the evaluations (:mod:`fastlam.eval`, which re-exports
:func:`load_clips` from ``fastlam.eval.common``).

Reads only the shape of ``model_cfg`` (``frames``, ``image_size``, ``encoder.tubelet``), so it
needs no model; the clips come from :mod:`fastlam.data`, which resolves every source type
(folder, list, manifest, shards: :func:`fastlam.data.source_clips.fixed_clips`).
"""
from __future__ import annotations

import torch

from .data import make_sprite_clips
from .data.source_clips import fixed_clips

__all__ = ["load_clips"]


def load_clips(source: str, model_cfg, num_clips: int, *, seed: int = 1, fps: float = 4.0) -> torch.Tensor:
    """Held-out clips (num_clips, 3, frames, H, W) shaped for ``model_cfg``: ``"synthetic"``
    draws sprite clips (with a seed the trainer does not use by default), anything else is a
    data source of any type (see :func:`~fastlam.data.source_clips.fixed_clips`), read with
    centre crops."""
    if num_clips < 1:
        raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
    tub = model_cfg.encoder.tubelet
    if source == "synthetic":
        video, _ = make_sprite_clips(num_clips, steps=model_cfg.frames // tub, tubelet=tub,
                                     size=model_cfg.image_size, seed=10_000 + seed)
        return video
    return fixed_clips(source, num_clips, num_frames=model_cfg.frames, fps=fps,
                       size=(model_cfg.image_size, model_cfg.image_size), seed=seed)
