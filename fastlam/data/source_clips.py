"""Fixed clips from a data source of any type, through one function (:func:`fixed_clips`).

The training diagnostics and the evaluations need a few fixed clips of the training data.
They used to list the source themselves as a text file of paths, which a Parquet manifest is
not (an error, so no diagnostics) and a ``shards.json`` is not either (one "missing file"
warning per line of JSON). Here the data layer resolves the source the way the loaders do:

* a folder, a text list of paths or a single video: :func:`~fastlam.data.list_videos`;
* a ``path label`` ``.csv`` list (V-JEPA 2): :func:`~fastlam.data.manifest.scan_sources`;
* a manifest (``.parquet`` / ``.jsonl``): :class:`~fastlam.data.VideoClipDataset` reads it
  (paths and probed durations, nothing is probed again);
* shards (``shards.json`` or tar URLs): :class:`~fastlam.data.shards.ShardStream`, the first
  decodable samples of its epoch-0 order.

Video sources give centre crops spread over the videos (``ceil(num_clips / videos)`` clips
per video, evenly spaced items); shard sources the first ``num_clips`` samples that decode.
"""
from __future__ import annotations

import math

import torch

from .dataset import VideoClipDataset, list_videos
from .manifest import is_manifest, scan_sources
from .shards import ShardStream, is_shard_source

__all__ = ["fixed_clips", "source_kind", "source_videos"]


def source_kind(source) -> str:
    """``"shards"``, ``"manifest"``, ``"csv"`` (a ``path label`` list) or ``"videos"`` (a folder,
    a text list of paths or a video)."""
    if is_shard_source(source):
        return "shards"
    if is_manifest(source):
        return "manifest"
    if str(source).lower().endswith(".csv"):
        return "csv"
    return "videos"


def source_videos(source) -> list[str]:
    """The videos of a folder, text list, ``.csv`` list or manifest, as the loaders see them;
    a shard source holds samples, not video files (``ValueError``)."""
    kind = source_kind(source)
    if kind == "shards":
        raise ValueError(f"source {str(source)!r} is a shard source: its samples are tar members, "
                         f"read them with ShardStream or fixed_clips")
    if kind == "manifest":
        return list(VideoClipDataset(source).paths)
    if kind == "csv":
        return [path for path, _ in scan_sources([source])]
    return list_videos(source)


def fixed_clips(source, num_clips: int, *, num_frames: int, fps: float, size: tuple[int, int],
                seed: int) -> torch.Tensor:
    """Up to ``num_clips`` fixed clips ``(n, 3, num_frames, H, W)`` in [0, 1] from ``source``
    (see the module docstring), the same for the same arguments. ``ValueError`` when the
    source yields none."""
    if num_clips < 1:
        raise ValueError(f"num_clips: expected >= 1, got {num_clips}")
    size = (int(size[0]), int(size[1]))
    if source_kind(source) == "shards":
        return _shard_clips(source, num_clips, num_frames=num_frames, fps=fps, size=size, seed=seed)
    # A manifest is read by the dataset itself (its durations included); lists resolve to paths.
    videos = source if source_kind(source) == "manifest" else source_videos(source)
    clip = dict(num_frames=num_frames, fps=fps, size=size, crop="center", seed=seed)
    ds = VideoClipDataset(videos, **clip)
    per_video = max(1, math.ceil(num_clips / len(ds.paths)))
    if per_video > 1:
        ds = VideoClipDataset(videos, clips_per_video=per_video, **clip)
    idx = torch.linspace(0, len(ds) - 1, num_clips).round().long().unique()
    return torch.stack([ds[int(i)] for i in idx])


def _shard_clips(source, num_clips: int, *, num_frames: int, fps: float, size: tuple[int, int],
                 seed: int) -> torch.Tensor:
    # shuffle_buffer=1: the stream's own order (shards in their epoch-0 order), not a mix.
    stream = ShardStream(source, num_frames=num_frames, fps=fps, size=size, crop="center",
                         seed=seed, shuffle_buffer=1)
    clips, reasons = [], []
    it = iter(stream)
    try:
        for clip, _, reason in it:
            if clip is None:
                reasons.append(reason)
                continue
            clips.append(clip)
            if len(clips) == num_clips:
                break
    finally:
        it.close()  # closes the shard it was reading
    if not clips:
        raise ValueError(f"source {str(source)!r}: no sample of the shards decodes"
                         + (f" (first: {reasons[0]})" if reasons else ""))
    return torch.stack(clips)
