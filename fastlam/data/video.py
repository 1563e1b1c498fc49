"""Decoding clips from real video files with PyAV.

Times are measured from the start of the video stream (its first presentation timestamp),
so ``start_s=0`` is the first frame even for MPEG program streams whose timestamps start at
0.5 s. Frames are picked by presentation timestamp, never by frame index, so constant,
fractional (29.97) and variable frame rates are handled the same way: output frame ``i`` is
the last decoded frame whose timestamp is ``<= start_s + i / fps``, i.e. the frame on screen
at that instant. A frame stays on screen until the next one starts (the last one for its own
duration); asking for an instant after that raises :class:`ClipTooShort`.

Everything returned is uint8 ``(frames, H, W, 3)`` RGB; :func:`clip_to_tensor` converts to
the float ``(3, frames, H, W)`` layout in ``[0, 1]`` that the models take.

The PyAV machinery behind these functions, which the dataset, the DALI loader, the manifest and
the shard reader use too, is :mod:`fastlam.data.decoding`; the errors and :class:`VideoInfo`
are defined there and exported here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .decoding import (
    ClipTooShort,
    VideoDecodeError,
    VideoInfo,
    check_clip_args,
    crop_offsets,
    frame_thresholds,
    is_real_number,
    last_frame_units,
    nominal_frame_units,
    open_video,
    opened_video,
    probe_opened,
    read_clip_opened,
    resize_rgb,
    resized_frame_shape,
    stream_origin,
    stream_rate,
    stream_sar,
    stream_time_base,
    too_short_error,
)

PathLike = str | Path

# File suffixes taken for video when a folder is searched (the dataset's and the manifest's).
VIDEO_EXTENSIONS = (".mp4", ".mpg", ".mpeg", ".avi", ".mkv", ".webm", ".mov")

__all__ = [
    "VideoInfo",
    "VideoDecodeError",
    "ClipTooShort",
    "probe_video",
    "read_clip",
    "clip_to_tensor",
    "DecodedVideo",
    "decode_video",
    "VIDEO_EXTENSIONS",
]


def probe_video(path: PathLike) -> VideoInfo:
    """Container-level facts about ``path``'s first video stream, without decoding frames.

    Raises :class:`VideoDecodeError` for a missing, empty, unreadable or video-less file.
    """
    container, stream = open_video(path)
    try:
        return probe_opened(path, container, stream)
    finally:
        container.close()


def read_clip(
    path: PathLike,
    *,
    num_frames: int = 16,
    fps: float = 4.0,
    start_s: float = 0.0,
    size: Sequence[int] = (256, 256),
    crop: str = "center",
    generator: torch.Generator | None = None,
    timeout_s: float | None = None,
) -> torch.Tensor:
    """Read ``num_frames`` frames sampled at ``fps`` starting ``start_s`` seconds in.

    Returns uint8 ``(num_frames, size[0], size[1], 3)`` RGB. The shorter side is resized to
    ``max(size)`` keeping the aspect ratio, then a ``size`` window is cropped (centre, or at a
    random offset drawn from ``generator``, the same for all frames of the clip).

    ``timeout_s`` bounds the decoding time (checked between frames): a file that makes the
    decoder crawl (damaged streams with endless error concealment, absurd resolutions) is
    reported as a :class:`VideoDecodeError` instead of stalling a training run. A call that
    blocks inside FFmpeg itself cannot be interrupted from Python.

    Raises :class:`VideoDecodeError` for files that cannot be decoded and
    :class:`ClipTooShort` (with the frames that were read) when the video ends first.
    """
    check_clip_args(num_frames, fps, start_s, size, crop)
    if timeout_s is not None and not (is_real_number(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, "
                         f"got {timeout_s!r}")
    with opened_video(path) as (container, stream):
        return read_clip_opened(path, container, stream, num_frames, fps, start_s, size, crop,
                                generator, timeout_s=timeout_s)


def clip_to_tensor(clip: torch.Tensor) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, H, W)`` in ``[0, 1]`` (batched: a leading B)."""
    if not isinstance(clip, torch.Tensor):
        raise TypeError(f"clip must be a torch.Tensor, got {type(clip).__name__}")
    if clip.dtype != torch.uint8:
        raise ValueError(f"clip must be uint8 (T, H, W, 3), got dtype {clip.dtype}")
    if clip.ndim not in (4, 5) or clip.shape[-1] != 3:
        raise ValueError(
            f"clip must have shape (T, H, W, 3) or (B, T, H, W, 3), got {tuple(clip.shape)}")
    perm = (3, 0, 1, 2) if clip.ndim == 4 else (0, 4, 1, 2, 3)
    # Reorder while still uint8 (a quarter of the bytes), then convert in place.
    return clip.permute(*perm).contiguous().float().div_(255.0)


@dataclass
class DecodedVideo:
    """A whole video decoded once and resized for one output ``size``, for repeated clips.

    Worth it for short videos sampled many times (``clips_per_video`` large, small corpora
    on CPU): every clip after the first costs an index instead of a decode. Clips are picked
    by the same timestamp rule as :func:`read_clip` and are bit-identical to it.
    """

    path: str
    frames: torch.Tensor  # uint8 (N, resized_h, resized_w, 3), presentation order
    pts: np.ndarray  # int64 (N,), strictly increasing, in time_base units
    origin: int
    time_base: Fraction
    end_pts: int  # the last frame stays on screen until here
    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.frames.numel()

    def clip(self, *, num_frames=16, fps=4.0, start_s=0.0, crop="center", generator=None):
        check_clip_args(num_frames, fps, start_s, self.size, crop)
        thresholds = np.asarray(frame_thresholds(self.origin, self.time_base, start_s, fps,
                                                 num_frames), dtype=np.int64)
        # Before the first picture the first picture is the closest there is (as read_clip).
        idx = np.maximum(np.searchsorted(self.pts, thresholds, side="right") - 1, 0)
        have = int(np.searchsorted(thresholds, self.end_pts, side="left"))
        rh, rw = self.frames.shape[1:3]
        top, left = crop_offsets(rh, rw, self.size, crop, generator)
        window = self.frames[:, top:top + self.size[0], left:left + self.size[1]]
        if have < num_frames:
            end_s = float((self.end_pts - self.origin) * self.time_base)
            got = window[torch.from_numpy(idx[:have])].numpy()
            raise too_short_error(self.path, list(got), end_s, num_frames, fps, start_s, self.size)
        return window[torch.from_numpy(idx)].contiguous()


def resized_shape(path: PathLike, size: Sequence[int]) -> tuple[int, int]:
    """(height, width) the frames of ``path`` take before cropping to ``size``."""
    container, stream = open_video(path)
    try:
        return resized_frame_shape(stream.width, stream.height, stream_sar(stream), max(size))
    finally:
        container.close()


def decode_video(path: PathLike, *, size: Sequence[int] = (256, 256),
                 timeout_s: float | None = None) -> DecodedVideo:
    """Decode every frame of ``path``, resized so its shorter side is ``max(size)``."""
    check_clip_args(1, 1.0, 0.0, size, "center")
    size = (int(size[0]), int(size[1]))
    with opened_video(path) as (container, stream):
        start_time = time.monotonic()
        tb = stream_time_base(path, stream)
        default_dur = nominal_frame_units(stream_rate(stream), tb)
        geometry = None
        arrays, pts_list, last = [], [], None
        for frame in container.decode(stream):
            if timeout_s is not None and time.monotonic() - start_time > timeout_s:
                raise VideoDecodeError(path, f"decoding timed out after {timeout_s:g} s")
            pts = frame.pts
            if pts is None:
                pts = (pts_list[-1] + default_dur) if pts_list else stream_origin(stream)
            if pts_list and pts <= pts_list[-1]:
                continue  # same rule as read_clip: only strictly later frames count
            if geometry is None:
                geometry = resized_frame_shape(frame.width, frame.height, stream_sar(stream),
                                               max(size))
            arrays.append(resize_rgb(frame, *geometry))
            pts_list.append(pts)
            last = frame
        if not arrays:
            raise ClipTooShort(path, "no decodable frames", frames=torch.empty(
                (0, size[0], size[1], 3), dtype=torch.uint8), needed=1)
        dur = last_frame_units(int(getattr(last, "duration", 0) or 0), np.diff(pts_list), default_dur)
        return DecodedVideo(path=str(path), frames=torch.from_numpy(np.stack(arrays)),
                            pts=np.asarray(pts_list, dtype=np.int64),
                            origin=stream_origin(stream), time_base=tb,
                            end_pts=pts_list[-1] + dur, size=size)
