"""Video data for fastlam: PyAV clip reading, a clip dataset, sample videos, synthetic clips,
the DALI loader (``fastlam.data.dali``), rank sharding, hard decode timeouts and the fused
preprocessing op (``csrc/``).

Knows nothing of the models: it produces float video ``(3, frames, H, W)`` in ``[0, 1]``
(batched ``(B, 3, frames, H, W)``) and the models normalise it themselves. PyAV is only
needed when real video is read; ``make_sprite_clips`` works without it.
"""
from .dataset import VIDEO_EXTENSIONS, VideoClipDataset, list_videos
from .preprocess import preprocess_frames, preprocess_reference
from .sampler import ShardedClipSampler
from .watchdog import DecodeTimeout, GuardedClipDataset, Watchdog
from .synthetic import make_sprite_clips
from .video import (
    ClipTooShort,
    DecodedVideo,
    VideoDecodeError,
    VideoInfo,
    clip_to_tensor,
    decode_video,
    probe_video,
    read_clip,
)

__all__ = [
    "VideoInfo",
    "VideoDecodeError",
    "ClipTooShort",
    "probe_video",
    "read_clip",
    "clip_to_tensor",
    "decode_video",
    "DecodedVideo",
    "VideoClipDataset",
    "VIDEO_EXTENSIONS",
    "list_videos",
    "fetch_samples",
    "make_sprite_clips",
    "preprocess_frames",
    "preprocess_reference",
    "ShardedClipSampler",
    "GuardedClipDataset",
    "Watchdog",
    "DecodeTimeout",
    "DaliVideoLoader",
]


def __getattr__(name):
    # Imported lazily so `python -m fastlam.data.samples` does not find its own module
    # already imported by the package (runpy warns about that).
    if name == "fetch_samples":
        from .samples import fetch_samples

        return fetch_samples
    if name == "DaliVideoLoader":  # DALI itself is imported only when a loader decodes
        from .dali import DaliVideoLoader

        return DaliVideoLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
