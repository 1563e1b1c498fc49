"""Fixed clips shaped for a model config: the held-out batches of the training diagnostics
(:mod:`fastlam.diagnostics`) and of the evaluations (:mod:`fastlam.eval`, which re-exports
:func:`load_clips` from ``fastlam.eval.common``).

Reads only the shape of ``model_cfg`` (``frames``, ``image_size``, ``encoder.tubelet``), so it
needs no model; the clips come from :mod:`fastlam.data`.
"""
from __future__ import annotations

import math

import torch

from .data import VideoClipDataset, list_videos, make_sprite_clips

__all__ = ["load_clips"]


def load_clips(source: str, model_cfg, num_clips: int, *, seed: int = 1, fps: float = 4.0) -> torch.Tensor:
    """Held-out clips (num_clips, 3, frames, H, W) shaped for ``model_cfg``: ``"synthetic"``
    draws sprite clips (with a seed the trainer does not use by default), anything else is a
    video source read with centre crops spread over each video."""
    if num_clips < 1:
        raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
    tub = model_cfg.encoder.tubelet
    if source == "synthetic":
        video, _ = make_sprite_clips(num_clips, steps=model_cfg.frames // tub, tubelet=tub,
                                     size=model_cfg.image_size, seed=10_000 + seed)
        return video
    n_videos = len(list_videos(source))
    ds = VideoClipDataset(source, num_frames=model_cfg.frames, fps=fps,
                          size=(model_cfg.image_size, model_cfg.image_size), crop="center", seed=seed,
                          clips_per_video=max(1, math.ceil(num_clips / n_videos)))
    idx = torch.linspace(0, len(ds) - 1, num_clips).round().long().unique()
    return torch.stack([ds[int(i)] for i in idx])
